// Package outbox is the transactional outbox: Enqueue writes an event in the
// same transaction as the change it announces, and Relay publishes what was
// written to RabbitMQ with publisher confirms.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
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
	var rows Rows
	id, err := rows.Add(ctx, routingKey, orderID, at, data)
	if err != nil {
		return "", err
	}
	rows.Queue(b)
	return id, nil
}

// Rows gathers outbox events to insert with one statement, for a caller
// that writes many at once (a group of orders, a batch of payments): one
// INSERT of n rows costs the server far less than n INSERTs.
type Rows struct {
	n    int
	args []any // each row's, one after the other (postgres.Values)
}

// Add encodes an event for the insert and returns its id. Like Enqueue, it
// keeps the trace ctx carries.
func (r *Rows) Add(ctx context.Context, routingKey, orderID string, at time.Time, data any) (string, error) {
	env, err := events.New(events.NewID(), routingKey, orderID, at, data)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(env)
	if err != nil {
		return "", fmt.Errorf("encode event: %w", err)
	}
	var tp *string
	if parent := trace.FromContext(ctx); parent != "" {
		child := trace.Child(parent)
		tp = &child
	}
	r.n++
	r.args = append(r.args, env.ID, routingKey, orderID, payload, tp)
	return env.ID, nil
}

// Len is the number of events added.
func (r *Rows) Len() int { return r.n }

// Queue queues the insert of every event added on b; it queues nothing when
// none was.
func (r *Rows) Queue(b *pgx.Batch) {
	if r.n == 0 {
		return
	}
	b.Queue(`INSERT INTO outbox (event_id, routing_key, order_id, payload, traceparent) VALUES `+
		postgres.Values("($1, $2, $3, $4, $5)", 5, r.n), r.args...)
}

// Publisher is what the relay publishes through: *broker.Publisher, with
// publisher confirms.
type Publisher interface {
	// PublishBatch publishes msgs and reports which the broker confirmed.
	// Given none, it returns once it could publish (a channel open, the
	// broker not blocking publishers), or with why it cannot.
	PublishBatch(ctx context.Context, msgs []broker.Message) (acked []bool, err error)
}

// Relay publishes the outbox to the orders exchange with publisher
// confirms. It reads the outbox as the log it is (Read, in commit order)
// from its position, "relay" in outbox_readers, publishes a batch, and
// moves its position past the batch only once the broker has confirmed
// every message of it; what the broker did not confirm it publishes again,
// alone. A row costs the database its insert and nothing more: no lease,
// no "sent" mark, no dead row for vacuum.
//
// Every process that writes the outbox runs a relay (orders, payment), and
// one of them publishes at a time: the one holding the relay's advisory
// lock, a session lock on a connection it keeps. The others try for it
// every second, so a relay that dies (its session ends, and the lock with
// it) hands over within a second or so. Whoever commits outbox rows in the
// relay's own process calls Wake, so they go out at once; the relay also
// polls, for rows committed by the other processes. A message is published
// twice only if its relay died between the confirm and storing its
// position: consumers' inboxes make that duplicate harmless.
type Relay struct {
	db    *pgxpool.Pool
	pub   Publisher
	log   *zap.Logger
	batch int
	// poll is how long the publishing relay waits for a Wake before it
	// reads anyway, for rows committed by other processes.
	poll time.Duration
	// gather is how long it lets rows gather after a Wake, so that under
	// load a read finds several rows, not one.
	gather time.Duration
	// standby is how often a relay that is not publishing tries to take
	// over.
	standby time.Duration
	// saveEvery bounds how often the position is written while busy: a
	// position lost in a crash only means messages published again.
	saveEvery time.Duration
	// publishTimeout bounds one batch's publish and confirms.
	publishTimeout time.Duration
	// minBackoff and maxBackoff bound the wait after a failure.
	minBackoff, maxBackoff time.Duration
	wake                   chan struct{}
	// idle, if set, is called each time the publishing relay has found
	// nothing to publish and is about to wait: tests know then that only
	// a Wake or a poll gets it going again.
	idle func()
}

// relayName is the relay's position in outbox_readers.
const relayName = "relay"

// RelayLockKey is the SQL for the key of the relay's advisory lock: one per
// schema, since each schema has an outbox of its own. The publishing relay's
// session holds it (pg_locks shows which).
const RelayLockKey = "hashtextextended('dabba outbox relay ' || current_schema(), 0)"

// NewRelay returns a relay publishing through pub (a *broker.Publisher).
func NewRelay(db *pgxpool.Pool, pub Publisher, log *zap.Logger) *Relay {
	return &Relay{db: db, pub: pub, log: log.With(zap.String("component", "outbox-relay")), batch: 500,
		poll: 10 * time.Millisecond, gather: 2 * time.Millisecond, standby: time.Second, saveEvery: 100 * time.Millisecond,
		publishTimeout: 10 * time.Second, minBackoff: 100 * time.Millisecond, maxBackoff: 5 * time.Second,
		wake: make(chan struct{}, 1)}
}

// Wake tells the relay that outbox rows were committed, so it publishes them
// now rather than at its next poll. It never blocks: wake-ups that arrive
// while one is pending fold into it, since one read takes every row there.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run relays until ctx is done: it waits to hold the relay's lock, then
// publishes until it loses it (its connection fails) or ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	backoff := r.minBackoff
	for {
		led, err := r.lead(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := r.standby
		if err != nil {
			r.log.Warn("outbox relay stopped publishing; will try again", zap.Error(err), zap.Duration("in", backoff))
			wait, backoff = backoff, min(2*backoff, r.maxBackoff)
		}
		if led {
			backoff = r.minBackoff
		}
		if !sleep(ctx, wait, nil) {
			return nil
		}
	}
}

// lead takes a connection, and with it the relay's lock if no other relay
// holds it, and publishes until it fails or ctx ends. led says it held the
// lock.
func (r *Relay) lead(ctx context.Context) (led bool, err error) {
	conn, err := r.db.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("acquire connection: %w", err)
	}
	// The lock lives as long as the session: a connection whose lock
	// state is in doubt goes, rather than back to the pool.
	defer func() {
		if led || err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		conn.Release()
	}()
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock("+RelayLockKey+")").Scan(&led); err != nil || !led {
		return false, err
	}
	// The session only reads and stores the relay's position. A position
	// lost in a crash only means messages published again, which the
	// consumers' inboxes make harmless: it need not wait for a flush.
	if _, err := conn.Exec(ctx, "SET synchronous_commit TO off"); err != nil {
		return true, err
	}
	r.log.Info("outbox relay publishing")
	return true, r.publishFrom(ctx, conn.Conn())
}

// publishFrom publishes from the stored position on conn, which holds the
// relay's lock, until ctx is done or conn fails.
func (r *Relay) publishFrom(ctx context.Context, conn *pgx.Conn) error {
	pos, err := loadPosition(ctx, conn, relayName)
	if err != nil {
		return err
	}
	saved, savedAt := pos, time.Now()
	defer func() {
		if saved != pos {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := savePosition(sctx, conn, relayName, pos); err != nil {
				r.log.Warn("store the relay's position on the way out; the last messages will go again", zap.Error(err))
			}
		}
	}()
	var pending []Entry // read, not yet all confirmed
	next := pos         // where pos goes once pending is confirmed
	backoff := r.minBackoff
	for {
		if len(pending) == 0 {
			// This read sees every row committed before a Wake it takes
			// here, so a wake-up pending from a busy spell is spent.
			select {
			case <-r.wake:
			default:
			}
			pending, next, err = Read(ctx, conn, pos, nil, r.batch)
			if err != nil {
				return err
			}
		}
		if len(pending) == 0 {
			pos = next
			if saved != pos {
				if err := savePosition(ctx, conn, relayName, pos); err != nil {
					return err
				}
				saved, savedAt = pos, time.Now()
			}
			if r.idle != nil {
				r.idle()
			}
			if !sleep(ctx, r.poll, r.wake) || !sleep(ctx, r.gather, nil) {
				return nil
			}
			continue
		}
		pending = r.publish(ctx, pending)
		if ctx.Err() != nil {
			return nil
		}
		if len(pending) > 0 {
			// The broker refused some or went away: publish those again,
			// alone, once it may be back.
			if !sleep(ctx, backoff, nil) {
				return nil
			}
			backoff = min(2*backoff, r.maxBackoff)
			continue
		}
		backoff = r.minBackoff
		pos = next
		if time.Since(savedAt) >= r.saveEvery {
			if err := savePosition(ctx, conn, relayName, pos); err != nil {
				return err
			}
			saved, savedAt = pos, time.Now()
		}
	}
}

// publish publishes the entries with confirms and returns those the broker
// did not confirm.
func (r *Relay) publish(ctx context.Context, entries []Entry) (unconfirmed []Entry) {
	msgs := make([]broker.Message, 0, len(entries))
	sendable := entries[:0:0]
	for _, e := range entries {
		if e.Err != nil {
			// Something other than Rows wrote the row; no consumer could
			// read it, and it must not hold the relay back.
			r.log.Error("outbox row is not an event; not published", zap.Int64("outbox_id", e.Position.ID), zap.Error(e.Err))
			continue
		}
		msgs, sendable = append(msgs, message(e)), append(sendable, e)
	}
	pctx, cancel := context.WithTimeout(ctx, r.publishTimeout)
	defer cancel()
	acked, err := r.pub.PublishBatch(pctx, msgs)
	for i, e := range sendable {
		if i >= len(acked) || !acked[i] {
			unconfirmed = append(unconfirmed, e)
		}
	}
	if len(unconfirmed) > 0 && ctx.Err() == nil {
		if err == nil {
			err = broker.ErrNotConfirmed
		}
		r.log.Warn("publish outbox events; will publish the unconfirmed again", zap.Error(err),
			zap.Int("unconfirmed", len(unconfirmed)), zap.Int("of", len(msgs)))
	}
	return unconfirmed
}

// message is the AMQP message of an outbox event.
func message(e Entry) broker.Message {
	headers := amqp.Table{}
	if e.TraceParent != "" && trace.Valid(e.TraceParent) {
		headers[trace.Header] = e.TraceParent
	}
	broker.SetSequence(headers, e.Seq, e.Prior)
	return broker.Message{Exchange: broker.ExchangeOrders, RoutingKey: e.Event.Type, MessageID: e.Event.ID,
		Type: e.Event.Type, CorrelationID: e.Event.OrderID, Body: e.Payload, Headers: headers}
}

// sleep waits d, or less if wake fires (a nil wake never does). It reports
// false when ctx is done.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

// Backlog returns how many events the relay has yet to publish and how old
// the oldest is (as of its last stored position, at most a moment behind).
func Backlog(ctx context.Context, db *pgxpool.Pool) (n int64, oldest time.Duration, err error) {
	var pos Position
	err = db.QueryRow(ctx, "SELECT tx, id FROM outbox_readers WHERE name = $1", relayName).Scan(&pos.Tx, &pos.ID)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, fmt.Errorf("outbox backlog: %w", err)
	}
	// Sent with the position's values in its text (the simple protocol),
	// so it is planned for them: rows after the position are few or all,
	// and the generic plan our connections use (postgres.Open) reads the
	// whole table for a handful of rows.
	var age float64
	err = db.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
		FROM outbox WHERE (tx, id) > ($1, $2)`, pgx.QueryExecModeSimpleProtocol, pos.Tx, pos.ID).Scan(&n, &age)
	if err != nil {
		return 0, 0, fmt.Errorf("outbox backlog: %w", err)
	}
	return n, time.Duration(age * float64(time.Second)), nil
}
