package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
)

// Store errors the handlers map to HTTP answers.
var (
	ErrNotFound    = errors.New("order not found")
	ErrKeyInFlight = errors.New("a request with this Idempotency-Key is still in flight")
	ErrKeyReused   = errors.New("this Idempotency-Key was used for a different request")
)

// IllegalMoveError is a status change the order's life does not allow, or
// not any more for whoever asks (Why says so).
type IllegalMoveError struct{ From, To, Why string }

func (e *IllegalMoveError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("the order is %s: %s", e.From, e.Why)
	}
	return fmt.Sprintf("an order cannot go from %s to %s", e.From, e.To)
}

// DefaultKeyTTL is how long an Idempotency-Key is remembered unless the
// store is told otherwise (IDEMPOTENCY_KEY_TTL).
const DefaultKeyTTL = 24 * time.Hour

// Store keeps orders, their history, idempotency records and outbox events.
type Store struct {
	db *pgxpool.Pool
	// wake tells this process's outbox relay that a commit wrote outbox
	// rows, so it publishes them now rather than at its next poll.
	wake func()
	// placing is the group commit of Place (place.go).
	placing placeQueue
	// KeyTTL is how long an Idempotency-Key's record is kept; set it
	// before the store is used.
	KeyTTL time.Duration
}

// NewStore returns a store on db that calls wake (which may be nil) after
// every commit that wrote outbox rows.
func NewStore(db *pgxpool.Pool, wake func()) *Store {
	if wake == nil {
		wake = func() {}
	}
	return &Store{db: db, wake: wake, placing: newPlaceQueue(), KeyTTL: DefaultKeyTTL}
}

// lockKey names the advisory lock of a customer's Idempotency-Key; the
// length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
func lockKey(customerID, key string) string {
	return fmt.Sprintf("%d:%s:%s", len(customerID), customerID, key)
}

func addHistory(ctx context.Context, tx pgx.Tx, orderID, status string, at time.Time) error {
	var b pgx.Batch
	queueHistory(&b, orderID, status, at)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("insert history: %w", err)
	}
	return nil
}

func queueHistory(b *pgx.Batch, orderID, status string, at time.Time) {
	b.Queue("INSERT INTO order_status_history (order_id, status, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", orderID, status, at)
}

const orderColumns = `id, status, customer_id, restaurant_id, email, items, delivery_address, total_cents, coalesce(rider_id, ''), created_at, updated_at`

func scanOrder(row pgx.Row) (Order, error) {
	var o Order
	var id uuid.UUID
	var items, addr []byte
	err := row.Scan(&id, &o.Status, &o.CustomerID, &o.RestaurantID, &o.Email, &items, &addr, &o.TotalCents, &o.RiderID, &o.CreatedAt, &o.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Order{}, ErrNotFound
	}
	if err != nil {
		return Order{}, fmt.Errorf("read order: %w", err)
	}
	o.ID = id.String()
	if err := json.Unmarshal(items, &o.Items); err != nil {
		return Order{}, fmt.Errorf("decode items: %w", err)
	}
	if err := json.Unmarshal(addr, &o.DeliveryAddress); err != nil {
		return Order{}, fmt.Errorf("decode address: %w", err)
	}
	o.CreatedAt, o.UpdatedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC()
	return o, nil
}

// Get returns an order with its history.
func (s *Store) Get(ctx context.Context, id string) (Order, error) {
	o, err := scanOrder(s.db.QueryRow(ctx, "SELECT "+orderColumns+" FROM orders WHERE id = $1", id))
	if err != nil {
		return Order{}, err
	}
	rows, err := s.db.Query(ctx, "SELECT status, at FROM order_status_history WHERE order_id = $1 ORDER BY at, status", id)
	if err != nil {
		return Order{}, fmt.Errorf("read history: %w", err)
	}
	o.History, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (StatusChange, error) {
		var c StatusChange
		err := r.Scan(&c.Status, &c.At)
		c.At = c.At.UTC()
		return c, err
	})
	if err != nil {
		return Order{}, fmt.Errorf("read history: %w", err)
	}
	return o, nil
}

// Move changes an order's status if its life allows it and allow (which
// sees the order as it is, locked) does, records the change and enqueues
// the event announcing it, in one transaction. The row lock (FOR UPDATE)
// makes concurrent moves of one order take turns.
func (s *Store) Move(ctx context.Context, id, to string, at time.Time, allow func(Order) error) (Order, error) {
	err := postgres.InTx(ctx, s.db, func(tx pgx.Tx) error {
		return move(ctx, tx, id, to, at, allow)
	})
	if err != nil {
		return Order{}, err
	}
	s.wake()
	return s.Get(ctx, id)
}

// move is Move inside tx.
func move(ctx context.Context, tx pgx.Tx, id, to string, at time.Time, allow func(Order) error) error {
	o, err := scanOrder(tx.QueryRow(ctx, "SELECT "+orderColumns+" FROM orders WHERE id = $1 FOR UPDATE", id))
	if err != nil {
		return err
	}
	if err := allow(o); err != nil {
		return err
	}
	if !canMove(o.Status, to) {
		return &IllegalMoveError{From: o.Status, To: to}
	}
	if _, err := tx.Exec(ctx, "UPDATE orders SET status = $2, updated_at = $3 WHERE id = $1", id, to, at); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	if err := addHistory(ctx, tx, id, to, at); err != nil {
		return err
	}
	_, err = outbox.Enqueue(ctx, tx, events.StatusEvent[to], id, at,
		events.StatusChanged{Status: to, From: o.Status, RestaurantID: o.RestaurantID, Email: o.Email})
	return err
}

// AssignRider records the rider delivering an order and enqueues
// order.rider_assigned. Orders already delivered or cancelled refuse.
func (s *Store) AssignRider(ctx context.Context, id, riderID string, at time.Time) (Order, error) {
	err := postgres.InTx(ctx, s.db, func(tx pgx.Tx) error {
		o, err := scanOrder(tx.QueryRow(ctx, "SELECT "+orderColumns+" FROM orders WHERE id = $1 FOR UPDATE", id))
		if err != nil {
			return err
		}
		if o.Status == events.StatusDelivered || o.Status == events.StatusCancelled || o.Status == events.StatusPaymentFailed {
			return &IllegalMoveError{From: o.Status, To: "rider assigned"}
		}
		if _, err := tx.Exec(ctx, "UPDATE orders SET rider_id = $2, updated_at = $3 WHERE id = $1", id, riderID, at); err != nil {
			return fmt.Errorf("assign rider: %w", err)
		}
		_, err = outbox.Enqueue(ctx, tx, events.OrderRiderAssigned, id, at, events.RiderAssigned{RiderID: riderID})
		return err
	})
	if err != nil {
		return Order{}, err
	}
	s.wake()
	return s.Get(ctx, id)
}

// orderSeqRetention is how long the numbering of an order's events
// (migrations/012_order_sequence.sql) is kept after its first, as long as
// consumers keep their cursors by default: an order's events all come
// within hours. An order with an event later still is numbered from 1
// again; a consumer whose cursor is ahead takes such an event at once (it
// comes after nothing), so that weakens its order and never holds it.
const orderSeqRetention = 7 * 24 * time.Hour

// Sweep deletes idempotency records past their expiry, the numbering of
// orders older than orderSeqRetention, and the outbox's rows older than
// outboxRetention that every reader has passed (outbox.Sweep), in batches.
func (s *Store) Sweep(ctx context.Context, outboxRetention time.Duration) error {
	_, err := postgres.Sweep(ctx, s.db, `DELETE FROM idempotency_keys WHERE (customer_id, key) IN (
		SELECT customer_id, key FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)`)
	if err != nil {
		return fmt.Errorf("sweep idempotency keys: %w", err)
	}
	_, err = postgres.Sweep(ctx, s.db, `DELETE FROM order_event_seq WHERE order_id IN (
		SELECT order_id FROM order_event_seq WHERE created_at < now() - $2 * interval '1 millisecond' LIMIT $1)`,
		orderSeqRetention.Milliseconds())
	if err != nil {
		return fmt.Errorf("sweep order event numbering: %w", err)
	}
	_, err = outbox.Sweep(ctx, s.db, outboxRetention)
	return err
}
