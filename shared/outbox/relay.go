// Package outbox is the transactional outbox: Enqueue writes an event in the
// same transaction as the change it announces, and Relay publishes what was
// written to RabbitMQ with publisher confirms.
package outbox

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
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
	ids, keys, orders []string
	payloads          [][]byte
	traceparents      []*string // nil without a trace
}

// Add encodes an event for the insert and returns its id. Like Enqueue, it
// keeps the trace ctx carries.
func (r *Rows) Add(ctx context.Context, routingKey, orderID string, at time.Time, data any) (string, error) {
	env, err := events.New(uuid.NewString(), routingKey, orderID, at, data)
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
	r.ids, r.keys, r.orders = append(r.ids, env.ID), append(r.keys, routingKey), append(r.orders, orderID)
	r.payloads, r.traceparents = append(r.payloads, payload), append(r.traceparents, tp)
	return env.ID, nil
}

// Len is the number of events added.
func (r *Rows) Len() int { return len(r.ids) }

// Queue queues the insert of every event added on b; it queues nothing when
// none was.
func (r *Rows) Queue(b *pgx.Batch) {
	if r.Len() == 0 {
		return
	}
	b.Queue(`INSERT INTO outbox (event_id, routing_key, order_id, payload, traceparent)
		SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bytea[], $5::text[])`,
		r.ids, r.keys, r.orders, r.payloads, r.traceparents)
}

// Publisher is what the relay publishes through: *broker.Publisher, with
// publisher confirms.
type Publisher interface {
	// PublishBatch publishes msgs and reports which the broker confirmed.
	// Given none, it returns once it could publish (a channel open, the
	// broker not blocking publishers), or with why it cannot.
	PublishBatch(ctx context.Context, msgs []broker.Message) (acked []bool, err error)
}

// Relay publishes outbox rows to the orders exchange with publisher confirms
// and marks them sent only once the broker confirmed them. Every service
// that writes events into the outbox (orders, payment) runs one.
//
// Whoever commits outbox rows in the same process calls Wake, so events go
// out at once; the relay also polls, for rows committed elsewhere and for a
// wake-up lost to a crash, so a row may wait a poll interval, never longer.
//
// It holds no lock while it publishes. A claim is one short transaction that
// leases a batch of unsent rows (lease_until); it publishes them; then one
// more marks the confirmed rows sent, clears the lease of the others so they
// go again at once, and claims the next batch. Several relays run at once:
// FOR UPDATE SKIP LOCKED in the claim and the lease give each its own rows,
// and rows whose relay died are anyone's once their lease has passed. A
// row is published twice only if its lease ran out mid-publish or its relay
// died between the confirm and the mark: consumers' inboxes make that
// duplicate harmless.
type Relay struct {
	db    *pgxpool.Pool
	pub   Publisher
	log   *zap.Logger
	batch int
	// poll is how long an idle relay waits for a Wake before looking anyway.
	poll time.Duration
	// gather is how long an idle relay lets rows gather after it is woken
	// before it claims: at a few hundred orders a second each wake-up
	// finds several rows, not one, for a few milliseconds of latency.
	gather time.Duration
	// lease is how long a claim keeps other relays off its rows; it must
	// outlast publishTimeout, or a slow publish is repeated by another relay.
	lease          time.Duration
	publishTimeout time.Duration
	// minBackoff and maxBackoff bound the wait after a failure.
	minBackoff, maxBackoff time.Duration
	wake                   chan struct{}
	// idle, if set, is called each time the relay has found nothing to
	// publish and is about to wait: tests know then that only a Wake or
	// a poll gets it going again.
	idle func()
}

// NewRelay returns a relay publishing through pub (a *broker.Publisher).
func NewRelay(db *pgxpool.Pool, pub Publisher, log *zap.Logger) *Relay {
	return &Relay{db: db, pub: pub, log: log.With(zap.String("component", "outbox-relay")), batch: 500,
		poll: time.Second, gather: 5 * time.Millisecond, lease: 30 * time.Second, publishTimeout: 10 * time.Second,
		minBackoff: 100 * time.Millisecond, maxBackoff: 5 * time.Second, wake: make(chan struct{}, 1)}
}

// Wake tells the relay that outbox rows were committed, so it publishes them
// now rather than at its next poll. It never blocks: wake-ups that arrive
// while one is pending fold into it, since one pass takes every row there.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// claimed is a batch of leased rows, ready to publish, in id order.
type claimed struct {
	ids   []int64
	msgs  []broker.Message
	lease time.Time // the lease the claim set: it tells this claim's rows from a later one's
}

// outcome is what publishing a batch left to record.
type outcome struct {
	sent   []int64 // confirmed: mark sent
	unsent []int64 // not confirmed: clear the lease, so they go again
	lease  time.Time
}

func (o outcome) empty() bool { return len(o.sent) == 0 && len(o.unsent) == 0 }

// Run relays until ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	// done is what the relay has yet to record: the last batch's outcome,
	// recorded with the next claim, or on the way out.
	var done outcome
	defer func() { r.flush(done) }()
	backoff := r.minBackoff
	for {
		// This claim sees every row committed before a Wake it takes
		// here (Wake comes after the commit, the claim's snapshot after
		// this), so a wake-up pending from a busy spell is spent, not
		// answered later by a claim that finds nothing.
		select {
		case <-r.wake:
		default:
		}
		err := r.ready(ctx)
		b, rerr := r.round(ctx, done, err == nil)
		if rerr == nil {
			// Until published, the claimed rows are to be freed if the
			// relay stops now.
			done = outcome{unsent: b.ids, lease: b.lease}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			r.log.Warn("relay outbox; will retry", zap.Error(err), zap.Duration("in", backoff))
			if !sleep(ctx, backoff, nil) {
				return nil
			}
			backoff = min(2*backoff, r.maxBackoff)
			continue
		}
		if len(b.ids) == 0 {
			backoff = r.minBackoff
			if r.idle != nil {
				r.idle()
			}
			if !sleep(ctx, r.poll, r.wake) || !sleep(ctx, r.gather, nil) {
				return nil
			}
			continue
		}
		done, err = r.publish(ctx, b)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			// Poll while busy: record this batch and claim the next in
			// one round trip, until a claim comes back empty.
			backoff = r.minBackoff
			continue
		}
		// The broker refused some or went away: record what it confirmed,
		// free the rest, and wait before trying again rather than spin.
		r.log.Warn("publish outbox batch; will retry", zap.Error(err), zap.Int("confirmed", len(done.sent)),
			zap.Int("of", len(b.ids)), zap.Duration("in", backoff))
		if _, err := r.round(ctx, done, false); err == nil {
			done = outcome{}
		}
		if !sleep(ctx, backoff, nil) {
			return nil
		}
		backoff = min(2*backoff, r.maxBackoff)
	}
}

// ready waits, up to publishTimeout, until the broker can take messages,
// so that the relay leases no rows it cannot publish: were it to die
// waiting for the broker, its lease would hold them back until it expired.
// With the broker there, it costs nothing (the channel is open).
func (r *Relay) ready(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, r.publishTimeout)
	defer cancel()
	_, err := r.pub.PublishBatch(pctx, nil)
	return err
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

// flush records done on the way out, so a stopping relay leaves behind no
// lease for a restart to wait out.
func (r *Relay) flush(done outcome) {
	if done.empty() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.round(ctx, done, false); err != nil {
		r.log.Warn("record outbox rows on the way out; their lease will expire", zap.Error(err))
	}
}

// The statements of a round. All run with synchronous_commit off: losing
// their effect in a PostgreSQL crash loses a lease (the row is claimed
// again) or a "sent" mark (the row is published again); consumers' inboxes
// make either harmless, and the relay no longer waits on a WAL flush for
// every batch.
const (
	// markSent keeps the first mark when two relays published a row.
	markSent = "UPDATE outbox SET sent_at = now(), lease_until = NULL WHERE id = ANY($1) AND sent_at IS NULL"
	// release frees rows only while they still carry this claim's lease.
	release = "UPDATE outbox SET lease_until = NULL WHERE id = ANY($1) AND sent_at IS NULL AND lease_until = $2"
	// claim takes the oldest rows neither sent nor leased, through
	// outbox_unsent_idx. The ids are gathered first (the ARRAY subquery,
	// run once) so the update finds its rows by primary key, whatever the
	// planner thinks of the table's size.
	claim = `UPDATE outbox SET lease_until = now() + $2 * interval '1 millisecond'
		WHERE id = ANY(ARRAY(SELECT id FROM outbox WHERE sent_at IS NULL AND (lease_until IS NULL OR lease_until < now())
			ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
		RETURNING id, event_id, routing_key, order_id, payload, traceparent, lease_until`
)

// round records done and, if next, claims the next batch: one round trip,
// one short transaction.
func (r *Relay) round(ctx context.Context, done outcome, next bool) (claimed, error) {
	if !next && done.empty() {
		return claimed{}, nil
	}
	var b pgx.Batch
	b.Queue("SET LOCAL synchronous_commit TO off")
	if len(done.sent) > 0 {
		b.Queue(markSent, done.sent)
	}
	if len(done.unsent) > 0 {
		b.Queue(release, done.unsent, done.lease)
	}
	if next {
		b.Queue(claim, r.batch, r.lease.Milliseconds())
	}
	var c claimed
	err := postgres.SendTx(ctx, r.db, &b, func(res pgx.BatchResults) error {
		n := b.Len()
		if next {
			n-- // the claim, read below
		}
		for range n {
			if _, err := res.Exec(); err != nil {
				return fmt.Errorf("record outbox rows: %w", err)
			}
		}
		if !next {
			return nil
		}
		rows, err := res.Query()
		if err != nil {
			return fmt.Errorf("claim outbox rows: %w", err)
		}
		c, err = scanClaim(rows)
		return err
	})
	return c, err
}

func scanClaim(rows pgx.Rows) (claimed, error) {
	type row struct {
		id  int64
		msg broker.Message
	}
	var got []row
	var c claimed
	for rows.Next() {
		var id int64
		var eventID, orderID uuid.UUID
		var key string
		var payload []byte
		var tp pgtype.Text
		if err := rows.Scan(&id, &eventID, &key, &orderID, &payload, &tp, &c.lease); err != nil {
			rows.Close()
			return claimed{}, fmt.Errorf("read outbox row: %w", err)
		}
		var headers amqp.Table
		if tp.Valid && trace.Valid(tp.String) {
			headers = amqp.Table{trace.Header: tp.String}
		}
		got = append(got, row{id, broker.Message{Exchange: broker.ExchangeOrders, RoutingKey: key, MessageID: eventID.String(),
			Type: key, CorrelationID: orderID.String(), Body: payload, Headers: headers}})
	}
	if err := rows.Err(); err != nil {
		return claimed{}, fmt.Errorf("claim outbox rows: %w", err)
	}
	// RETURNING keeps no order; events go out in the order they were written.
	slices.SortFunc(got, func(a, b row) int { return cmp.Compare(a.id, b.id) })
	for _, g := range got {
		c.ids = append(c.ids, g.id)
		c.msgs = append(c.msgs, g.msg)
	}
	return c, nil
}

// publish publishes b and sorts its rows by whether the broker confirmed
// them; err says why some were not, if it knows.
func (r *Relay) publish(ctx context.Context, b claimed) (outcome, error) {
	pctx, cancel := context.WithTimeout(ctx, r.publishTimeout)
	defer cancel()
	acked, err := r.pub.PublishBatch(pctx, b.msgs)
	o := outcome{lease: b.lease}
	for i, id := range b.ids {
		if i < len(acked) && acked[i] {
			o.sent = append(o.sent, id)
		} else {
			o.unsent = append(o.unsent, id)
		}
	}
	if err == nil && len(o.unsent) > 0 {
		err = broker.ErrNotConfirmed
	}
	return o, err
}

// OutboxBacklog returns how many events wait to be published and how old
// the oldest is.
func OutboxBacklog(ctx context.Context, db *pgxpool.Pool) (n int64, oldest time.Duration, err error) {
	var age float64
	err = db.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
		FROM outbox WHERE sent_at IS NULL`).Scan(&n, &age)
	return n, time.Duration(age * float64(time.Second)), err
}
