package main

import (
	"bytes"
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

// IllegalMoveError is a status change the order's life does not allow.
type IllegalMoveError struct{ From, To string }

func (e *IllegalMoveError) Error() string {
	return fmt.Sprintf("an order cannot go from %s to %s", e.From, e.To)
}

// idempotencyTTL is how long an Idempotency-Key is remembered.
const idempotencyTTL = 24 * time.Hour

// Store keeps orders, their history, idempotency records and outbox events.
type Store struct {
	db *pgxpool.Pool
	// wake tells this process's outbox relay that a commit wrote outbox
	// rows, so it publishes them now rather than at its next poll.
	wake func()
}

// NewStore returns a store on db that calls wake (which may be nil) after
// every commit that wrote outbox rows.
func NewStore(db *pgxpool.Pool, wake func()) *Store {
	if wake == nil {
		wake = func() {}
	}
	return &Store{db: db, wake: wake}
}

// savedResponse is the first answer to an idempotent request.
type savedResponse struct {
	Status   int
	Body     []byte
	Location string
	Replayed bool
}

// errReplayed ends Place's transaction without writing: the answer is the
// one recorded.
var errReplayed = errors.New("replayed")

// Place stores a new order, its first history entry, its order.placed outbox
// event and the idempotency record of the request, in one transaction. The
// response is rendered inside the transaction by respond so the record holds
// exactly the bytes sent.
//
// It takes two round trips (postgres.InBatchedTx): BEGIN, the lock and the
// lookup; then the inserts and COMMIT. A request that ends early (key in
// flight, replay, key reused) costs the same two: the second is ROLLBACK.
//
// A transaction-scoped advisory lock on (customer, key) serialises requests
// that share a key: the second one, finding the lock taken, gets
// ErrKeyInFlight at once instead of waiting; once the first committed, it
// finds the record and replays it.
func (s *Store) Place(ctx context.Context, key string, req placeRequest, o Order, respond func(Order) ([]byte, error)) (savedResponse, error) {
	var res savedResponse
	err := postgres.InBatchedTx(ctx, s.db, func(b *pgx.Batch) {
		// A batch's statements run in order, each with its own snapshot,
		// so the lookup sees a record committed by whoever held the lock
		// before.
		b.Queue("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", lockKey(req.CustomerID, key))
		b.Queue(`SELECT request_hash, status_code, response_body, location FROM idempotency_keys
			WHERE customer_id = $1 AND key = $2 AND expires_at > now()`, req.CustomerID, key)
	}, func(results pgx.BatchResults, b *pgx.Batch) error {
		var locked bool
		if err := results.QueryRow().Scan(&locked); err != nil {
			return fmt.Errorf("lock idempotency key: %w", err)
		}
		var hash []byte
		err := results.QueryRow().Scan(&hash, &res.Status, &res.Body, &res.Location)
		switch {
		case !locked:
			return ErrKeyInFlight
		case err == nil:
			if !bytes.Equal(hash, req.fingerprint()) {
				return ErrKeyReused
			}
			res.Replayed = true
			return errReplayed
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("look up idempotency key: %w", err)
		}
		body, err := respond(o)
		if err != nil {
			return err
		}
		res = savedResponse{Status: 201, Body: body, Location: "/v1/orders/" + o.ID}
		items, _ := json.Marshal(o.Items)
		addr, _ := json.Marshal(o.DeliveryAddress)
		b.Queue(`INSERT INTO orders (id, customer_id, restaurant_id, email, items, delivery_address, total_cents, status, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)`,
			o.ID, o.CustomerID, o.RestaurantID, o.Email, items, addr, o.TotalCents, o.Status, o.CreatedAt)
		queueHistory(b, o.ID, o.Status, o.CreatedAt)
		placed := events.Placed{CustomerID: o.CustomerID, RestaurantID: o.RestaurantID, Email: o.Email,
			Items: o.Items, TotalCents: o.TotalCents, DeliveryAddress: o.DeliveryAddress}
		if _, err := outbox.Add(ctx, b, events.OrderPlaced, o.ID, o.CreatedAt, placed); err != nil {
			return err
		}
		// An expired record for the same key is replaced; a live one
		// cannot exist here, since the lookup above found none.
		b.Queue(`INSERT INTO idempotency_keys (customer_id, key, request_hash, status_code, response_body, location, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval)
			ON CONFLICT (customer_id, key) DO UPDATE SET request_hash = excluded.request_hash, status_code = excluded.status_code,
				response_body = excluded.response_body, location = excluded.location, created_at = now(), expires_at = excluded.expires_at`,
			req.CustomerID, key, req.fingerprint(), res.Status, res.Body, res.Location, idempotencyTTL.String())
		return nil
	})
	switch {
	case errors.Is(err, errReplayed):
		return res, nil
	case errors.Is(err, ErrKeyInFlight), errors.Is(err, ErrKeyReused):
		return res, err
	case err != nil:
		return res, fmt.Errorf("place order: %w", err)
	}
	s.wake()
	return res, nil
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

// Move changes an order's status if its life allows it, records the change
// and enqueues the event announcing it, in one transaction. The row lock
// (FOR UPDATE) makes concurrent moves of one order take turns.
func (s *Store) Move(ctx context.Context, id, to string, at time.Time) (Order, error) {
	err := postgres.InTx(ctx, s.db, func(tx pgx.Tx) error {
		return move(ctx, tx, id, to, at, true)
	})
	if err != nil {
		return Order{}, err
	}
	s.wake()
	return s.Get(ctx, id)
}

// move is Move inside tx; publish says whether to enqueue the event (the
// payment service publishes its own).
func move(ctx context.Context, tx pgx.Tx, id, to string, at time.Time, publish bool) error {
	o, err := scanOrder(tx.QueryRow(ctx, "SELECT "+orderColumns+" FROM orders WHERE id = $1 FOR UPDATE", id))
	if err != nil {
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
	if !publish {
		return nil
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

// Sweep deletes idempotency records past their expiry and outbox rows sent
// more than a day ago.
func (s *Store) Sweep(ctx context.Context) error {
	if _, err := s.db.Exec(ctx, "DELETE FROM idempotency_keys WHERE expires_at <= now()"); err != nil {
		return fmt.Errorf("sweep idempotency keys: %w", err)
	}
	if _, err := s.db.Exec(ctx, "DELETE FROM outbox WHERE sent_at < now() - interval '1 day'"); err != nil {
		return fmt.Errorf("sweep outbox: %w", err)
	}
	return nil
}
