package consumer

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/trace"
)

// Per-order ordering. The outbox numbers each order's events as they are
// written and lists the routing keys of the ones before
// (migrations/012_order_sequence.sql); the relay sends both as headers. An
// Ordered consumer applies an event only once it has applied the event it
// comes after: the last earlier event of the order that its queue is bound
// to (broker.WorkQueue.After). It keeps, per order, the number of the last
// event it applied (order_cursors), written in the transaction of the
// effects, and takes an advisory lock per order of a batch, so that two
// workers or instances never apply one order's events at once.
//
// An event that comes before its predecessor (the predecessor is being
// retried, was dead-lettered, or is in another instance's hands) is held:
// stored in held_events in the same transaction, and acked. Once the
// predecessor is applied, the transaction that applied it finds the held
// events it frees and, after the commit, publishes them to the queue again;
// tendHeld does the same every few seconds for what a crash left behind. An
// event held for longer than the hold limit (its predecessor never came, or
// lies in the DLQ) is dead-lettered behind it, marked so that a replay
// applies it without waiting again.

// DefaultHoldLimit is how long an event waits for its predecessor before it
// is dead-lettered.
const DefaultHoldLimit = time.Hour

// tendEvery is how often tendHeld looks for held events to release or give
// up on.
const tendEvery = 5 * time.Second

// HoldLimit sets how long an event of c waits for its predecessor
// (DefaultHoldLimit unless set).
func (c *Consumer) HoldLimit(d time.Duration) *Consumer {
	c.holdLimit = d
	return c
}

// sequence returns the event's number and the number of the event it comes
// after, for c's queue. An event dead-lettered for waiting too long and
// replayed comes after nothing: the operator has decided it goes.
func (c *Consumer) sequence(d broker.Delivery) (seq, after int) {
	seq, prior := d.Sequence()
	if seq == 0 || d.Headers[broker.HeaderWaitGivenUp] != nil {
		return seq, 0
	}
	return seq, c.queue.After(prior)
}

// cursors is where each order of a batch is for an ordered consumer: the
// number of the last of its events applied.
type cursors struct {
	consumer string
	orders   []string // the batch's
	at       map[string]int
	moved    map[string]bool
}

// newCursors returns the cursors of orders, those of items, or nil when no
// event of items is numbered (an unordered consumer, or ordering off).
func (c *Consumer) newCursors(items []*item, orders []string) *cursors {
	for _, it := range items {
		if it.seq > 0 {
			cur := &cursors{consumer: c.queue.Name, orders: orders, at: make(map[string]int, len(orders)), moved: map[string]bool{}}
			for _, id := range orders {
				cur.at[id] = 0
			}
			return cur
		}
	}
	return nil
}

func (cur *cursors) queueRead(b *pgx.Batch) {
	b.Queue(`SELECT order_id::text, seq FROM order_cursors WHERE consumer = $1 AND order_id = ANY($2::uuid[])`,
		cur.consumer, cur.orders)
}

func (cur *cursors) read(res pgx.BatchResults) error {
	rows, err := res.Query()
	if err != nil {
		return fmt.Errorf("read order cursors: %w", err)
	}
	var id string
	var seq int
	_, err = pgx.ForEachRow(rows, []any{&id, &seq}, func() error { cur.at[id] = seq; return nil })
	if err != nil {
		return fmt.Errorf("read order cursors: %w", err)
	}
	return nil
}

// split divides items into those that may be applied now (unnumbered, or
// their predecessor applied) and those that wait. Without cursors every
// item may.
func (cur *cursors) split(items []*item) (ready, waiting []*item) {
	if cur == nil {
		return items, nil
	}
	for _, it := range items {
		if it.seq == 0 || cur.at[it.env.OrderID] >= it.after {
			ready = append(ready, it)
		} else {
			waiting = append(waiting, it)
		}
	}
	return ready, waiting
}

// applied moves it's order past it. A cursor never goes back: an event
// numbered below it (replayed after giving up, say) leaves it where it is.
func (cur *cursors) applied(it *item) {
	if cur == nil || it.seq <= cur.at[it.env.OrderID] {
		return
	}
	cur.at[it.env.OrderID] = it.seq
	cur.moved[it.env.OrderID] = true
}

// queueWrite queues the cursors that moved, the events held back, and the
// read of the held events the moves free.
func (cur *cursors) queueWrite(b *pgx.Batch, waiting []*item) {
	moved, seqs := make([]string, 0, len(cur.moved)), make([]int32, 0, len(cur.moved))
	for id := range cur.moved {
		moved, seqs = append(moved, id), append(seqs, int32(cur.at[id]))
	}
	if len(moved) > 0 {
		b.Queue(`INSERT INTO order_cursors (consumer, order_id, seq)
			SELECT $1, * FROM unnest($2::uuid[], $3::int[])
			ON CONFLICT (consumer, order_id) DO UPDATE SET seq = greatest(order_cursors.seq, excluded.seq)`,
			cur.consumer, moved, seqs)
	}
	if n := len(waiting); n > 0 {
		ids, orders, keys, priors, tps := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]*string, n)
		seqs, afters, bodies := make([]int32, n), make([]int32, n), make([][]byte, n)
		for i, it := range waiting {
			ids[i], orders[i], keys[i] = it.env.ID, it.env.OrderID, it.env.Type
			priors[i], _ = it.d.Headers[broker.HeaderPrior].(string)
			seqs[i], afters[i], bodies[i] = int32(it.seq), int32(it.after), it.d.Body
			if it.d.TraceParent != "" {
				tps[i] = &it.d.TraceParent
			}
		}
		b.Queue(`INSERT INTO held_events (consumer, event_id, order_id, seq, after, routing_key, prior, body, traceparent)
			SELECT $1, * FROM unnest($2::text[], $3::uuid[], $4::int[], $5::int[], $6::text[], $7::text[], $8::bytea[], $9::text[])
			ON CONFLICT DO NOTHING`, cur.consumer, ids, orders, seqs, afters, keys, priors, bodies, tps)
	}
	if len(moved) > 0 {
		b.Queue(freeSQL+` AND h.order_id = ANY($2::uuid[]) ORDER BY h.order_id, h.seq`, cur.consumer, moved)
	}
}

// readWrite reads the answers of queueWrite's statements and returns the
// held events the batch frees.
func (cur *cursors) readWrite(res pgx.BatchResults, waiting []*item) ([]held, error) {
	if len(cur.moved) > 0 {
		if _, err := res.Exec(); err != nil {
			return nil, fmt.Errorf("write order cursors: %w", err)
		}
	}
	if len(waiting) > 0 {
		if _, err := res.Exec(); err != nil {
			return nil, fmt.Errorf("hold events: %w", err)
		}
	}
	if len(cur.moved) == 0 {
		return nil, nil
	}
	rows, err := res.Query()
	if err != nil {
		return nil, fmt.Errorf("read held events: %w", err)
	}
	return scanHeld(rows)
}

// held is an event held back until its predecessor is applied.
type held struct {
	EventID, OrderID string
	Seq, After       int
	RoutingKey       string
	Prior            string
	Body             []byte
	TraceParent      string
	HeldAt           time.Time
}

const heldSQL = `SELECT h.event_id, h.order_id::text, h.seq, h.after, h.routing_key, h.prior, h.body,
	coalesce(h.traceparent, ''), h.held_at FROM held_events h`

// freeSQL reads consumer $1's held events whose predecessor is applied.
const freeSQL = heldSQL + ` JOIN order_cursors c ON c.consumer = h.consumer AND c.order_id = h.order_id
	WHERE h.consumer = $1 AND h.after <= c.seq`

// queryHeld runs sql, a read of heldSQL's columns.
func (c *Consumer) queryHeld(ctx context.Context, sql string, args ...any) ([]held, error) {
	rows, err := c.db.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read held events: %w", err)
	}
	return scanHeld(rows)
}

func scanHeld(rows pgx.Rows) ([]held, error) {
	var hs []held
	var h held
	_, err := pgx.ForEachRow(rows, []any{&h.EventID, &h.OrderID, &h.Seq, &h.After, &h.RoutingKey, &h.Prior, &h.Body, &h.TraceParent, &h.HeldAt},
		func() error { hs = append(hs, h); return nil })
	if err != nil {
		return nil, fmt.Errorf("read held events: %w", err)
	}
	return hs, nil
}

// message is h as published again to queue: as the relay first published
// it, with its original routing key in the header the retry ladder uses.
func (h held) message(queue string) broker.Message {
	headers := amqp.Table{broker.HeaderRoutingKey: h.RoutingKey}
	if h.TraceParent != "" {
		headers[trace.Header] = h.TraceParent
	}
	var prior []string
	if h.Prior != "" {
		prior = strings.Split(h.Prior, ",")
	}
	broker.SetSequence(headers, h.Seq, prior)
	return broker.Message{RoutingKey: queue, MessageID: h.EventID, Type: h.RoutingKey, CorrelationID: h.OrderID,
		Body: h.Body, Headers: headers, Mandatory: true}
}

// release publishes the held events hs, whose predecessors are applied, to
// c's queue again, with confirms, and forgets those the broker confirmed.
// What it could not publish stays held for tendHeld; what it published
// but could not forget is published again by tendHeld, and the inbox (or
// the effect's key) makes that copy harmless.
func (c *Consumer) release(ctx context.Context, hs []held) {
	msgs := make([]broker.Message, len(hs))
	for i, h := range hs {
		msgs[i] = h.message(c.queue.Name)
	}
	c.moveOn(ctx, hs, msgs, "release held events")
}

// giveUp dead-letters the held events hs, which waited longer than the
// hold limit, behind the predecessor they waited for.
func (c *Consumer) giveUp(ctx context.Context, hs []held) {
	msgs := make([]broker.Message, len(hs))
	now := time.Now().UTC()
	for i, h := range hs {
		m := h.message(c.queue.Name) // the dead-letter exchange routes by the work queue's name
		m.Exchange = broker.ExchangeDLX
		m.Headers[broker.HeaderQueue] = c.queue.Name
		m.Headers[broker.HeaderReason] = broker.ReasonWaitedTooLong
		m.Headers[broker.HeaderDeadAt] = now.Format(time.RFC3339Nano)
		m.Headers[broker.HeaderError] = fmt.Sprintf("waited %s for event #%d of order %s, which was not applied",
			now.Sub(h.HeldAt).Round(time.Second), h.After, h.OrderID)
		m.Headers[broker.HeaderWaitGivenUp] = int32(h.After)
		msgs[i] = m
		c.log.Error("dead-lettering: waited too long for its predecessor", zap.String("queue", c.queue.Name),
			zap.String("message_id", h.EventID), zap.String("order_id", h.OrderID), zap.Int("seq", h.Seq), zap.Int("after", h.After))
	}
	c.moveOn(ctx, hs, msgs, "dead-letter held events")
}

// moveOn publishes msgs, one for each of hs, and deletes the held events
// whose message the broker confirmed.
func (c *Consumer) moveOn(ctx context.Context, hs []held, msgs []broker.Message, what string) {
	if c.pub == nil || len(hs) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	acked, err := c.pub.PublishBatch(pctx, msgs)
	cancel()
	var ids []string
	for i, h := range hs {
		if i < len(acked) && acked[i] {
			ids = append(ids, h.EventID)
			if msgs[i].Exchange == broker.ExchangeDLX {
				c.metrics.DeadLettered(broker.ReasonWaitedTooLong)
			}
		}
	}
	if err != nil || len(ids) < len(hs) {
		c.log.Warn(what+"; will try again", zap.String("queue", c.queue.Name), zap.Error(err), zap.Int("confirmed", len(ids)), zap.Int("of", len(hs)))
	}
	if len(ids) == 0 {
		return
	}
	if _, err := c.db.Exec(ctx, `DELETE FROM held_events WHERE consumer = $1 AND event_id = ANY($2)`, c.queue.Name, ids); err != nil {
		c.log.Warn(what+": forget them; they go again", zap.String("queue", c.queue.Name), zap.Error(err))
	}
	if ce := c.log.Check(zap.InfoLevel, what); ce != nil {
		ce.Write(zap.String("queue", c.queue.Name), zap.Int("events", len(ids)))
	}
}

// tendHeld, every tendEvery until ctx is done, publishes again the held
// events whose predecessor is applied (a crash after the commit that freed
// them left them behind), dead-letters those that waited longer than the
// hold limit, and sweeps the cursors of orders older than the inbox keeps
// records.
func (c *Consumer) tendHeld(ctx context.Context) {
	lastSweep := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(tendEvery):
		}
		if err := c.tend(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("tend held events; will try again", zap.String("queue", c.queue.Name), zap.Error(err))
		}
		if time.Since(lastSweep) > min(c.retention/100, 10*time.Minute) {
			_, err := postgres.Sweep(ctx, c.db, `DELETE FROM order_cursors WHERE ctid = ANY(ARRAY(
				SELECT ctid FROM order_cursors WHERE created_at < now() - $3 * interval '1 millisecond' AND consumer = $2 LIMIT $1))`,
				c.queue.Name, c.retention.Milliseconds())
			if err != nil && ctx.Err() == nil {
				c.log.Warn("sweep order cursors; will try again", zap.String("queue", c.queue.Name), zap.Error(err))
			}
			lastSweep = time.Now()
		}
	}
}

// tend releases and gives up on held events once, and counts those still
// held.
func (c *Consumer) tend(ctx context.Context) error {
	free, err := c.queryHeld(ctx, freeSQL+` ORDER BY h.order_id, h.seq LIMIT 500`, c.queue.Name)
	if err != nil {
		return err
	}
	c.release(ctx, free)
	stale, err := c.queryHeld(ctx, heldSQL+` WHERE h.consumer = $1 AND h.held_at < now() - $2 * interval '1 millisecond'
		ORDER BY h.order_id, h.seq LIMIT 500`, c.queue.Name, c.holdLimit.Milliseconds())
	if err != nil {
		return err
	}
	c.giveUp(ctx, stale)
	var n int
	if err := c.db.QueryRow(ctx, `SELECT count(*) FROM held_events WHERE consumer = $1`, c.queue.Name).Scan(&n); err != nil {
		return err
	}
	c.metrics.Held(n)
	return nil
}
