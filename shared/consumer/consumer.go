// Package consumer is how every Dabba service consumes its work queue: a
// typed dispatcher over broker.Consume. For each batch the broker hands
// over, it decodes and checks every event, dead-letters what no route
// accepts, claims the inbox entries of the whole batch with one round trip,
// applies the effects of the events not seen before, by type, and records
// them in the inbox, all in one transaction. A redelivered event therefore
// never has a second effect, and
// a consumer is one row of broker.WorkQueues and one set of routes:
//
//	consumer.New(broker.QueuePayment, db, log,
//		consumer.On(events.OrderPlaced, charge)) // func(ctx, tx, []consumer.Event[events.Placed]) error
package consumer

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/trace"
)

// Event is one new event of a batch, its payload decoded as T.
type Event[T any] struct {
	ID         string // the event id, also the message id and the inbox key
	Type       string
	OrderID    string
	OccurredAt time.Time
	Data       T
	Delivery   broker.Delivery

	failed *error
}

// Fail marks e as failed while the rest of its batch goes on: no inbox
// record is written for it, and once the others are committed e is retried
// (or dead-lettered, for a Permanent error) alone. A handler calls it
// instead of writing e's effect; returning an error instead fails the whole
// batch.
func (e Event[T]) Fail(err error) { *e.failed = err }

// Context returns ctx carrying e's trace, so that what a handler publishes
// about e (through the outbox) continues e's trace.
func (e Event[T]) Context(ctx context.Context) context.Context {
	if e.Delivery.TraceParent == "" {
		return ctx
	}
	return trace.NewContext(ctx, e.Delivery.TraceParent)
}

// Fields are the log fields that identify e's message.
func (e Event[T]) Fields() []zap.Field { return e.Delivery.Fields() }

// item is an event of a batch on its way through Handle.
type item struct {
	index int // in the broker's batch
	env   events.Envelope
	data  any
	d     broker.Delivery
	err   error // set through Event.Fail
	// seq is the event's number among its order's events (0: unordered)
	// and after the number of the event it waits for (order.go).
	seq, after int
}

// Route is what a consumer does with one event type.
type Route struct {
	typ    string
	decode func(events.Envelope) (any, error)
	handle func(context.Context, pgx.Tx, []*item) error
}

// On routes events of type typ to h, with their payloads decoded as T (an
// event whose payload does not decode is dead-lettered). h gets the new
// events of a batch, in the order they arrived, inside the transaction that
// will record them in the inbox; it does its outside work first (a charge,
// an e-mail), then writes their effects in tx, and returns nil, or an error
// to roll the batch back (each message is then handled alone), or calls
// Event.Fail for single events.
func On[T any](typ string, h func(ctx context.Context, tx pgx.Tx, batch []Event[T]) error) Route {
	return Route{
		typ: typ,
		decode: func(env events.Envelope) (any, error) {
			var v T
			if err := events.DecodeData(env, &v); err != nil {
				return nil, err
			}
			return v, nil
		},
		handle: func(ctx context.Context, tx pgx.Tx, items []*item) error {
			batch := make([]Event[T], len(items))
			for i, it := range items {
				batch[i] = Event[T]{ID: it.env.ID, Type: it.env.Type, OrderID: it.env.OrderID, OccurredAt: it.env.OccurredAt,
					Data: it.data.(T), Delivery: it.d, failed: &it.err}
			}
			return h(ctx, tx, batch)
		},
	}
}

// OnEvery routes each of types to h: for a consumer that treats every
// event alike (analytics records them all, tracking keeps each order's
// latest state).
func OnEvery[T any](types []string, h func(ctx context.Context, tx pgx.Tx, batch []Event[T]) error) []Route {
	routes := make([]Route, len(types))
	for i, typ := range types {
		routes[i] = On(typ, h)
	}
	return routes
}

// Consumer consumes one work queue through its routes.
type Consumer struct {
	queue  broker.WorkQueue
	cfg    broker.ConsumerConfig
	db     *pgxpool.Pool
	log    *zap.Logger
	routes map[string]Route
	// keyed: the effects are their own inbox (EffectsKeyedByEvent).
	keyed bool
	// retention is how long the inbox keeps a record (InboxRetention).
	retention time.Duration
	// pub publishes held events again once they may go (order.go), and
	// metrics counts them; nil until Run.
	pub     *broker.Publisher
	metrics *metrics.Queue
	// holdLimit is how long an event waits for its predecessor
	// (HoldLimit).
	holdLimit time.Duration
}

// DefaultInboxRetention is how long a consumer's inbox keeps the record of
// a processed message unless told otherwise (INBOX_RETENTION).
const DefaultInboxRetention = 7 * 24 * time.Hour

// New returns the consumer of the work queue named queue (a row of
// broker.WorkQueues, whose settings it takes), applying its effects in db.
// It panics on a queue that is not in the table or a type routed twice:
// both are mistakes in the program, not conditions to handle.
func New(queue string, db *pgxpool.Pool, log *zap.Logger, routes ...Route) *Consumer {
	q, ok := broker.LookupWorkQueue(queue)
	if !ok {
		panic("consumer: no work queue " + queue)
	}
	c := &Consumer{queue: q, cfg: q.Config(), db: db, log: log, routes: map[string]Route{}, retention: DefaultInboxRetention,
		holdLimit: DefaultHoldLimit}
	for _, r := range routes {
		if _, dup := c.routes[r.typ]; dup {
			panic("consumer: " + r.typ + " routed twice")
		}
		c.routes[r.typ] = r
	}
	return c
}

// Types returns the event types c accepts, sorted. A test holds them equal
// to the queue's bindings.
func (c *Consumer) Types() []string {
	types := make([]string, 0, len(c.routes))
	for t := range c.routes {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

// LimitBatch lowers c's batch size to n (at least 1), for a consumer whose
// effects are paced (e-mail's rate limit): a batch is one transaction, and a
// transaction should not stay open for long.
func (c *Consumer) LimitBatch(n int) *Consumer {
	c.cfg.Batch = max(1, min(c.cfg.Batch, n))
	return c
}

// EffectsKeyedByEvent declares that each of c's effects is one row keyed by
// the event id and written with ON CONFLICT DO NOTHING (the restaurant's
// notifications, analytics' events), and that an event failed with Fail
// writes no row. Such an effect is its own inbox: c records nothing in
// processed_messages (one row and one index entry fewer per message), and
// a redelivered event reaches its route again and changes nothing. A
// consumer with any other effect (an e-mail sent, a charge, an update)
// keeps the shared inbox, which tells it which events are new before it
// acts.
func (c *Consumer) EffectsKeyedByEvent() *Consumer {
	c.keyed = true
	return c
}

// Timeout sets how long c's handling of one batch may take (30 s unless
// set), for a consumer whose effects wait on something slow by design.
func (c *Consumer) Timeout(d time.Duration) *Consumer {
	c.cfg.HandlerTimeout = d
	return c
}

// InboxRetention sets how long c's inbox keeps the record of a processed
// message (DefaultInboxRetention unless set); older records are swept.
// Every copy of an event reaches a consumer within seconds of the first (a
// relay publishing again, a redelivery, the retry ladder's 30 s), or after
// an outage, within its length; one later than the retention can no longer
// be told from one processed before, so c dead-letters an event older than
// that, unless an operator replayed it (a replay is a message that failed,
// never processed).
func (c *Consumer) InboxRetention(d time.Duration) *Consumer {
	c.retention = d
	return c
}

// Run consumes c's queue on conn until ctx is done, and sweeps its inbox.
func (c *Consumer) Run(ctx context.Context, conn *broker.Conn) error {
	if !c.keyed {
		go c.sweepInbox(ctx)
	}
	if c.queue.Ordered {
		c.pub, c.metrics = broker.NewPublisher(conn, c.log), conn.QueueMetrics(c.queue.Name)
		defer c.pub.Close()
		go c.tendHeld(ctx)
	}
	return broker.Consume(ctx, conn, c.cfg, c.Handle, c.log)
}

// sweepInbox deletes c's inbox records past the retention, every so often.
func (c *Consumer) sweepInbox(ctx context.Context) {
	every := min(c.retention/100, 10*time.Minute)
	for {
		if _, err := postgres.SweepInbox(ctx, c.db, c.queue.Name, c.retention); err != nil && ctx.Err() == nil {
			c.log.Warn("sweep the inbox; will try again", zap.String("queue", c.queue.Name), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// Handle handles one batch of deliveries: it is c's broker.BatchHandler,
// exported so tests can hand it deliveries without a broker.
func (c *Consumer) Handle(ctx context.Context, batch []broker.Delivery) error {
	failures := broker.Failures{}
	items := make([]*item, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for i, d := range batch {
		it, err := c.decode(d)
		if err != nil {
			failures[i] = err
			continue
		}
		if seen[it.env.ID] {
			continue // the same event twice in one batch: settled with the first
		}
		seen[it.env.ID] = true
		it.index = i
		items = append(items, it)
	}
	if len(items) > 0 {
		var hooks []func()
		hctx := context.WithValue(ctx, hooksKey{}, &hooks)
		if err := postgres.InTx(hctx, c.db, func(tx pgx.Tx) error { return c.apply(hctx, tx, items) }); err != nil {
			if postgres.IsUnavailable(err) {
				return broker.Unavailable("database", err)
			}
			return err
		}
		for _, fn := range hooks {
			fn()
		}
		for _, it := range items {
			if it.err != nil {
				failures[it.index] = it.err
			}
		}
	}
	switch {
	case len(failures) == 0:
		return nil
	case len(batch) == 1:
		return failures[0] // settled the same way, and plainer to read
	}
	return failures
}

// decode checks what every event needs (an envelope, a UUID order id, a
// route, a payload its route can read); each error is permanent.
func (c *Consumer) decode(d broker.Delivery) (*item, error) {
	env, err := events.Decode(d.Body)
	if err != nil {
		return nil, err
	}
	if _, err := uuid.Parse(env.OrderID); err != nil {
		return nil, fmt.Errorf("%w: order_id %q is not a UUID", events.ErrMalformed, env.OrderID)
	}
	r, ok := c.routes[env.Type]
	if !ok {
		return nil, broker.Permanent(fmt.Errorf("%s does not handle %s", c.queue.Name, env.Type))
	}
	if age := time.Since(env.OccurredAt); !c.keyed && age > c.retention && d.Headers[broker.HeaderReplays] == nil {
		return nil, broker.Permanent(fmt.Errorf("event of %s ago, older than the inbox keeps records (%s): whether it was processed cannot be told; replay it if it was not",
			age.Round(time.Second), c.retention))
	}
	data, err := r.decode(env)
	if err != nil {
		return nil, err
	}
	it := &item{env: env, data: data, d: d}
	if c.queue.Ordered {
		it.seq, it.after = c.sequence(d)
	}
	return it, nil
}

// apply claims the batch's inbox entries (and, for an ordered consumer,
// locks its orders and reads where each is), hands the events not
// processed before to their routes, then records in the inbox those whose
// effects were written. Routes run a type at a time, in the order each type
// first arrived; an ordered consumer runs them in rounds, each taking the
// events whose predecessor is applied, so an order's order.placed goes
// before its order.paid in one batch too, and holds the events whose
// predecessor is not (order.go). Nothing is written before the routes run,
// so a route's outside work (a charge, an e-mail) happens before the
// transaction gets a transaction id (postgres.LockKeys says why that
// matters).
func (c *Consumer) apply(ctx context.Context, tx pgx.Tx, items []*item) error {
	fresh, cur, err := c.claim(ctx, tx, items)
	if err != nil {
		return err
	}
	var pending []*item
	for _, it := range items {
		if !fresh[it.env.ID] {
			if ce := c.log.Check(zap.InfoLevel, "duplicate event skipped"); ce != nil {
				ce.Write(it.d.Fields()...)
			}
			continue
		}
		pending = append(pending, it)
	}
	var done []string
	for len(pending) > 0 {
		ready, waiting := cur.split(pending)
		if len(ready) == 0 {
			break
		}
		if err := c.handle(ctx, tx, ready); err != nil {
			return err
		}
		for _, it := range ready {
			if it.err == nil {
				done = append(done, it.env.ID)
				cur.applied(it)
			}
		}
		pending = waiting
	}
	return c.record(ctx, tx, done, cur, pending)
}

// handle hands items to their routes, a type at a time, in the order each
// type first arrived.
func (c *Consumer) handle(ctx context.Context, tx pgx.Tx, items []*item) error {
	var order []string
	groups := map[string][]*item{}
	for _, it := range items {
		if _, ok := groups[it.env.Type]; !ok {
			order = append(order, it.env.Type)
		}
		groups[it.env.Type] = append(groups[it.env.Type], it)
	}
	for _, typ := range order {
		if err := c.routes[typ].handle(ctx, tx, groups[typ]); err != nil {
			return err
		}
	}
	return nil
}

// claim locks and reads, in one round trip, what deciding on items needs:
// which are new to c (with keyed effects every one counts as new, since
// the effect's key decides) and, when they are numbered, where each of
// their orders is. The locks make a concurrent batch with the same
// messages wait for this one: an ordered consumer locks their orders, so
// that it also never applies one order's events in two batches at once.
func (c *Consumer) claim(ctx context.Context, tx pgx.Tx, items []*item) (map[string]bool, *cursors, error) {
	ids := make([]string, len(items))
	fresh := make(map[string]bool, len(items))
	for i, it := range items {
		ids[i] = it.env.ID
		fresh[it.env.ID] = true // keyed: the effect's key decides
	}
	orders := orderIDs(items)
	cur := c.newCursors(items, orders)
	var b pgx.Batch
	if !c.keyed || cur != nil {
		locks := ids
		if c.queue.Ordered {
			locks = orders
		}
		postgres.LockKeys(&b, c.queue.Name, locks)
	}
	if !c.keyed {
		postgres.QueueUnprocessed(&b, c.queue.Name, ids)
	}
	if cur != nil {
		cur.queueRead(&b)
	}
	if b.Len() == 0 {
		return fresh, nil, nil
	}
	res := tx.SendBatch(ctx, &b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return nil, nil, fmt.Errorf("lock inbox entries: %w", err)
	}
	if !c.keyed {
		var err error
		if fresh, err = postgres.ReadUnprocessed(res, len(ids)); err != nil {
			return nil, nil, err
		}
	}
	if cur != nil {
		if err := cur.read(res); err != nil {
			return nil, nil, err
		}
	}
	return fresh, cur, res.Close()
}

// orderIDs returns the distinct order ids of items.
func orderIDs(items []*item) []string {
	seen := make(map[string]bool, len(items))
	var ids []string
	for _, it := range items {
		if !seen[it.env.OrderID] {
			seen[it.env.OrderID] = true
			ids = append(ids, it.env.OrderID)
		}
	}
	return ids
}

// record writes, in one round trip, the inbox records of done, and for an
// ordered consumer where its orders now are and the events held back
// (waiting); it arranges for the held events that may now go to be
// published again once the transaction has committed.
func (c *Consumer) record(ctx context.Context, tx pgx.Tx, done []string, cur *cursors, waiting []*item) error {
	var b pgx.Batch
	if !c.keyed {
		postgres.QueueRecordProcessed(&b, c.queue.Name, done)
	}
	if cur != nil {
		cur.queueWrite(&b, waiting)
	}
	if b.Len() == 0 {
		return nil
	}
	res := tx.SendBatch(ctx, &b)
	defer res.Close()
	if !c.keyed && len(done) > 0 {
		if _, err := res.Exec(); err != nil {
			return fmt.Errorf("record processed messages: %w", err)
		}
	}
	if cur != nil {
		released, err := cur.readWrite(res, waiting)
		if err != nil {
			return err
		}
		if len(released) > 0 {
			AfterCommit(ctx, func() { c.release(context.WithoutCancel(ctx), released) })
		}
	}
	return res.Close()
}

type hooksKey struct{}

// AfterCommit runs fn once the transaction of the batch ctx belongs to has
// committed (tracking tells watching customers only what is stored). Called
// outside a consumer's handler, it runs fn at once.
func AfterCommit(ctx context.Context, fn func()) {
	if hooks, ok := ctx.Value(hooksKey{}).(*[]func()); ok {
		*hooks = append(*hooks, fn)
		return
	}
	fn()
}

// CheckBindings reports an error unless the event types c routes are
// exactly those its queue's bindings deliver: a bound type without a route
// would be dead-lettered, a route without a binding would never run.
func (c *Consumer) CheckBindings() error {
	var bound []string
	for _, key := range events.RoutingKeys {
		if c.queue.Binds(key) {
			bound = append(bound, key)
		}
	}
	slices.Sort(bound)
	if routed := c.Types(); !slices.Equal(bound, routed) {
		return fmt.Errorf("queue %s: bindings deliver %v, routes accept %v", c.queue.Name, bound, routed)
	}
	return nil
}
