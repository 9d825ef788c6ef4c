// Package outbox is the transactional outbox: Enqueue writes an event in the
// same transaction as the change it announces, and Relay publishes what was
// written to RabbitMQ with publisher confirms.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/trace"
)

// Enqueue writes an event to the outbox inside the caller's transaction; the
// relay publishes it once the transaction has committed. It returns the
// event's id. The trace ctx carries (trace.FromContext) continues in the
// event: the row keeps a child traceparent, which the relay sends on.
func Enqueue(ctx context.Context, tx pgx.Tx, routingKey, orderID string, at time.Time, data any) (string, error) {
	var b pgx.Batch
	id, err := Add(ctx, &b, routingKey, orderID, at, data)
	if err != nil {
		return "", err
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return "", fmt.Errorf("insert outbox event: %w", err)
	}
	return id, nil
}

// Add queues the outbox insert of an event on b, for a caller that sends
// its transaction's statements in one round trip; sending b inside the
// transaction is the caller's part. It returns the event's id. Like
// Enqueue, it keeps the trace ctx carries.
func Add(ctx context.Context, b *pgx.Batch, routingKey, orderID string, at time.Time, data any) (string, error) {
	env, err := events.New(uuid.NewString(), routingKey, orderID, at, data)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(env)
	if err != nil {
		return "", fmt.Errorf("encode event: %w", err)
	}
	var tp any // NULL without a trace
	if parent := trace.FromContext(ctx); parent != "" {
		tp = trace.Child(parent)
	}
	b.Queue("INSERT INTO outbox (event_id, routing_key, order_id, payload, traceparent) VALUES ($1, $2, $3, $4, $5)",
		env.ID, routingKey, orderID, payload, tp)
	return env.ID, nil
}

// Relay publishes outbox rows to the orders exchange with publisher confirms
// and marks them sent only once the broker confirmed them. Every service
// that writes events into the outbox (orders, payment) relies on it.
//
// It wakes on NOTIFY from the outbox trigger and polls as a fallback, so a
// lost notification (a dropped connection) delays an event, never loses it.
// Several relays may run at once: FOR UPDATE SKIP LOCKED hands each a
// different set of rows. If a relay dies after the broker confirmed but
// before its commit, its rows are published again: consumers' inboxes make
// that duplicate harmless.
type Relay struct {
	db    *pgxpool.Pool
	pub   *broker.Publisher
	log   *zap.Logger
	batch int
	poll  time.Duration
}

// NewRelay returns a relay publishing through pub.
func NewRelay(db *pgxpool.Pool, pub *broker.Publisher, log *zap.Logger) *Relay {
	return &Relay{db: db, pub: pub, log: log.With(zap.String("component", "outbox-relay")), batch: 500, poll: time.Second}
}

// Run relays until ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go r.listen(ctx, wake)
	backoff := 100 * time.Millisecond
	for {
		n, err := r.relayOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := r.poll
		switch {
		case err != nil:
			r.log.Warn("relay outbox; will retry", zap.Error(err), zap.Duration("in", backoff))
			wait, backoff = backoff, min(2*backoff, 5*time.Second)
		case n == r.batch:
			backoff = 100 * time.Millisecond
			continue // more are waiting
		default:
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(wait):
		}
	}
}

// relayOnce publishes one batch of unsent rows and returns how many it took.
func (r *Relay) relayOnce(ctx context.Context) (int, error) {
	var n int
	err := postgres.InTx(ctx, r.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, event_id, routing_key, order_id, payload, traceparent FROM outbox
			WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, r.batch)
		if err != nil {
			return fmt.Errorf("read outbox: %w", err)
		}
		var ids []int64
		var msgs []broker.Message
		for rows.Next() {
			var id int64
			var eventID, orderID uuid.UUID
			var key string
			var payload []byte
			var tp pgtype.Text
			if err := rows.Scan(&id, &eventID, &key, &orderID, &payload, &tp); err != nil {
				return fmt.Errorf("read outbox row: %w", err)
			}
			var headers amqp.Table
			if tp.Valid && trace.Valid(tp.String) {
				headers = amqp.Table{trace.Header: tp.String}
			}
			ids = append(ids, id)
			msgs = append(msgs, broker.Message{Exchange: broker.ExchangeOrders, RoutingKey: key, MessageID: eventID.String(),
				Type: key, CorrelationID: orderID.String(), Body: payload, Headers: headers})
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read outbox: %w", err)
		}
		n = len(msgs)
		if n == 0 {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		acked, perr := r.pub.PublishBatch(pctx, msgs)
		sent := make([]int64, 0, n)
		for i, ok := range acked {
			if ok {
				sent = append(sent, ids[i])
			}
		}
		if len(sent) > 0 {
			if _, err := tx.Exec(ctx, "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)", sent); err != nil {
				return fmt.Errorf("mark outbox rows sent: %w", err)
			}
		}
		if perr != nil {
			// Commit what was confirmed; the rest stays unsent.
			r.log.Warn("publish outbox batch", zap.Error(perr), zap.Int("confirmed", len(sent)), zap.Int("of", n))
		}
		if len(sent) < n && perr == nil {
			r.log.Warn("broker did not confirm every event; they stay in the outbox", zap.Int("confirmed", len(sent)), zap.Int("of", n))
		}
		return nil
	})
	return n, err
}

// listen turns NOTIFY outbox into wake-ups, reconnecting as needed.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		if err := r.listenOnce(ctx, wake); err != nil && ctx.Err() == nil {
			r.log.Debug("outbox listener", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context, wake chan<- struct{}) error {
	conn, err := r.db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN outbox"); err != nil {
		return err
	}
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			// The connection may be broken; do not return it to the pool.
			conn.Conn().Close(context.Background())
			return err
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// OutboxBacklog returns how many events wait to be published and how old
// the oldest is.
func OutboxBacklog(ctx context.Context, db *pgxpool.Pool) (n int64, oldest time.Duration, err error) {
	var age float64
	err = db.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
		FROM outbox WHERE sent_at IS NULL`).Scan(&n, &age)
	return n, time.Duration(age * float64(time.Second)), err
}
