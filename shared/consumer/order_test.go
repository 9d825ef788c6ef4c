package consumer

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// orderedRig is an ordered consumer of the e-mail queue's types whose
// routes record, in order, the events they applied, and fail those in fail.
type orderedRig struct {
	t       *testing.T
	db      *pgxpool.Pool
	c       *Consumer
	mu      sync.Mutex
	applied []string // "<order>/<type>"
	fail    map[string]error
	block   chan struct{} // when set, order.placed waits for it
	working chan struct{} // closed when a blocked order.placed waits
}

func newOrderedRig(t *testing.T) *orderedRig {
	r := &orderedRig{t: t, db: testenv.MustOwnSchema(t), fail: map[string]error{}}
	r.c = New(broker.QueueEmail, r.db, zaptest.NewLogger(t),
		On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Placed]) error {
			if r.block != nil {
				close(r.working)
				<-r.block
			}
			return apply(r, batch)
		}),
		On(events.OrderPaid, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Paid]) error { return apply(r, batch) }),
		On(events.OrderCancelled, func(ctx context.Context, tx pgx.Tx, batch []Event[events.StatusChanged]) error {
			return apply(r, batch)
		}),
	)
	return r
}

func apply[T any](r *orderedRig, batch []Event[T]) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range batch {
		if err := r.fail[e.ID]; err != nil {
			e.Fail(err)
			continue
		}
		r.applied = append(r.applied, e.OrderID+"/"+e.Type)
	}
	return nil
}

// event is the delivery of an order's event number seq, after the events
// of types prior.
func (r *orderedRig) event(orderID, key string, data any, prior ...string) broker.Delivery {
	d := testenv.Delivery(r.t, broker.QueueEmail, key, orderID, data)
	d.Headers = amqp.Table{}
	broker.SetSequence(d.Headers, len(prior)+1, prior)
	return d
}

func (r *orderedRig) appliedOf(orderID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.applied {
		if id, typ, _ := strings.Cut(a, "/"); id == orderID {
			out = append(out, typ)
		}
	}
	return out
}

// held returns the ids of the events the rig's consumer holds for orderID
// and whether each may go now (its predecessor applied).
func (r *orderedRig) held(orderID string) map[string]bool {
	rows, err := r.db.Query(context.Background(), `SELECT h.event_id, h.after <= coalesce(c.seq, 0) FROM held_events h
		LEFT JOIN order_cursors c ON c.consumer = h.consumer AND c.order_id = h.order_id
		WHERE h.consumer = $1 AND h.order_id = $2`, broker.QueueEmail, orderID)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]bool{}
	var id string
	var free bool
	if _, err := pgx.ForEachRow(rows, []any{&id, &free}, func() error { out[id] = free; return nil }); err != nil {
		r.t.Fatal(err)
	}
	return out
}

// redeliver is what the broker delivers when the consumer publishes the
// held event id again (held.message).
func (r *orderedRig) redeliver(id string) broker.Delivery {
	hs, err := r.c.queryHeld(context.Background(), heldSQL+" WHERE h.consumer = $1 AND h.event_id = $2", broker.QueueEmail, id)
	if err != nil || len(hs) != 1 {
		r.t.Fatalf("held %s: %v %v", id, hs, err)
	}
	m := hs[0].message(broker.QueueEmail)
	return broker.Delivery{Queue: broker.QueueEmail, MessageID: m.MessageID, RoutingKey: m.Headers[broker.HeaderRoutingKey].(string),
		Type: m.Type, CorrelationID: m.CorrelationID, Body: m.Body, Headers: m.Headers, Attempt: 1}
}

var (
	placed    = events.Placed{}
	paid      = events.Paid{}
	cancelled = events.StatusChanged{}
)

func TestOrdering(t *testing.T) {
	ctx := context.Background()
	r := newOrderedRig(t)

	t.Run("OKOneBatchOutOfOrder", func(t *testing.T) {
		o := uuid.NewString()
		err := r.c.Handle(ctx, []broker.Delivery{
			r.event(o, events.OrderCancelled, cancelled, events.OrderPlaced, events.OrderPaid),
			r.event(o, events.OrderPaid, paid, events.OrderPlaced),
			r.event(o, events.OrderPlaced, placed),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := r.appliedOf(o), []string{events.OrderPlaced, events.OrderPaid, events.OrderCancelled}; !slices.Equal(got, want) {
			t.Fatalf("applied %v, want %v", got, want)
		}
	})

	t.Run("OKEarlyEventHeldUntilItsPredecessor", func(t *testing.T) {
		o := uuid.NewString()
		early := r.event(o, events.OrderPaid, paid, events.OrderPlaced)
		if err := r.c.Handle(ctx, []broker.Delivery{early}); err != nil {
			t.Fatalf("an early event: %v, want it held and acked", err)
		}
		if got := r.appliedOf(o); len(got) != 0 {
			t.Fatalf("applied %v before its predecessor", got)
		}
		if h := r.held(o); len(h) != 1 || h[early.MessageID] {
			t.Fatalf("held %v, want %s waiting", h, early.MessageID)
		}
		if err := r.c.Handle(ctx, []broker.Delivery{r.event(o, events.OrderPlaced, placed)}); err != nil {
			t.Fatal(err)
		}
		if h := r.held(o); !h[early.MessageID] {
			t.Fatalf("held %v after its predecessor, want %s free to go", h, early.MessageID)
		}
		if err := r.c.Handle(ctx, []broker.Delivery{r.redeliver(early.MessageID)}); err != nil {
			t.Fatal(err)
		}
		if got, want := r.appliedOf(o), []string{events.OrderPlaced, events.OrderPaid}; !slices.Equal(got, want) {
			t.Fatalf("applied %v, want %v", got, want)
		}
	})

	t.Run("ErrFailedPredecessorHoldsTheRest", func(t *testing.T) {
		o := uuid.NewString()
		first, next := r.event(o, events.OrderPlaced, placed), r.event(o, events.OrderPaid, paid, events.OrderPlaced)
		r.fail[first.MessageID] = broker.Unavailable("smtp", errors.New("451 try later"))
		err := r.c.Handle(ctx, []broker.Delivery{first, next})
		var f broker.Failures
		if !errors.As(err, &f) || len(f) != 1 || f[0] == nil {
			t.Fatalf("err = %v, want order.placed alone failed", err)
		}
		if got := r.appliedOf(o); len(got) != 0 {
			t.Fatalf("applied %v while order.placed failed", got)
		}
		if h := r.held(o); len(h) != 1 || h[next.MessageID] {
			t.Fatalf("held %v, want order.paid waiting", h)
		}
		delete(r.fail, first.MessageID)
		if err := r.c.Handle(ctx, []broker.Delivery{first}); err != nil {
			t.Fatal(err)
		}
		if h := r.held(o); !h[next.MessageID] {
			t.Fatalf("held %v, want order.paid free once order.placed was applied", h)
		}
	})

	t.Run("OKEventsOfOtherQueuesAreNoGap", func(t *testing.T) {
		// Between order.placed and order.cancelled the order was accepted
		// and picked up: e-mail is bound to neither, so order.cancelled
		// comes after order.placed alone.
		o := uuid.NewString()
		for _, d := range []broker.Delivery{
			r.event(o, events.OrderPlaced, placed),
			r.event(o, events.OrderCancelled, cancelled, events.OrderPlaced, events.OrderAccepted, events.OrderPickedUp),
		} {
			if err := r.c.Handle(ctx, []broker.Delivery{d}); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := r.appliedOf(o), []string{events.OrderPlaced, events.OrderCancelled}; !slices.Equal(got, want) {
			t.Fatalf("applied %v, want %v", got, want)
		}
	})

	t.Run("OKUnnumberedAndGivenUpGoAtOnce", func(t *testing.T) {
		o := uuid.NewString()
		plain := testenv.Delivery(t, broker.QueueEmail, events.OrderPaid, o, paid) // ordering off
		givenUp := r.event(o, events.OrderCancelled, cancelled, events.OrderPlaced, events.OrderPaid)
		givenUp.Headers[broker.HeaderWaitGivenUp] = int32(2)
		if err := r.c.Handle(ctx, []broker.Delivery{plain, givenUp}); err != nil {
			t.Fatal(err)
		}
		if got, want := r.appliedOf(o), []string{events.OrderPaid, events.OrderCancelled}; !slices.Equal(got, want) {
			t.Fatalf("applied %v, want %v", got, want)
		}
	})

	t.Run("OKTwoWorkersOneOrder", func(t *testing.T) {
		// One worker applies order.placed slowly; another is handed
		// order.paid meanwhile. It waits for the first to commit, then
		// applies order.paid after it.
		o := uuid.NewString()
		r.block, r.working = make(chan struct{}), make(chan struct{})
		defer func() { r.block = nil }()
		first := make(chan error, 1)
		go func() { first <- r.c.Handle(ctx, []broker.Delivery{r.event(o, events.OrderPlaced, placed)}) }()
		<-r.working
		second := make(chan error, 1)
		go func() {
			second <- r.c.Handle(ctx, []broker.Delivery{r.event(o, events.OrderPaid, paid, events.OrderPlaced)})
		}()
		select {
		case err := <-second:
			t.Fatalf("order.paid settled (%v) while order.placed was in hand", err)
		case <-time.After(300 * time.Millisecond):
		}
		close(r.block)
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if err := <-second; err != nil {
			t.Fatal(err)
		}
		if got, want := r.appliedOf(o), []string{events.OrderPlaced, events.OrderPaid}; !slices.Equal(got, want) {
			t.Fatalf("applied %v, want %v", got, want)
		}
		if h := r.held(o); len(h) != 0 {
			t.Fatalf("held %v, want nothing", h)
		}
	})
}

func TestAfter(t *testing.T) {
	q, _ := broker.LookupWorkQueue(broker.QueuePayment) // order.placed, order.cancelled
	for _, c := range []struct {
		prior []string
		want  int
	}{
		{nil, 0},
		{[]string{events.OrderPlaced}, 1},
		{[]string{events.OrderPlaced, events.OrderPaid, events.OrderAccepted}, 1},
		{[]string{events.OrderPlaced, events.OrderCancelled, events.OrderRefunded}, 2},
		{[]string{events.OrderPaid}, 0},
	} {
		if got := q.After(c.prior); got != c.want {
			t.Errorf("After(%v) = %d, want %d", c.prior, got, c.want)
		}
	}
}

// TestHeldTooLongIsDeadLettered: an event whose predecessor does not come
// within the hold limit is dead-lettered behind it, with the reason and
// the mark that lets a replay apply it without waiting again.
func TestHeldTooLongIsDeadLettered(t *testing.T) {
	ctx := context.Background()
	r := newOrderedRig(t)
	r.c.HoldLimit(time.Millisecond)
	conn := testenv.MustBroker(t)
	r.c.pub = broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer r.c.pub.Close()
	o := uuid.NewString()
	early := r.event(o, events.OrderPaid, paid, events.OrderPlaced)
	if err := r.c.Handle(ctx, []broker.Delivery{early}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = dlq.Discard(context.Background(), conn, broker.QueueEmail, dlq.Selector{IDs: []string{early.MessageID}})
	})
	time.Sleep(10 * time.Millisecond)
	if err := r.c.tend(ctx); err != nil {
		t.Fatal(err)
	}
	if h := r.held(o); len(h) != 0 {
		t.Fatalf("still held after the hold limit: %v", h)
	}
	var dead *dlq.Message
	testenv.Eventually(t, 10*time.Second, "the held event in email.dlq", func() bool {
		page, err := dlq.Show(ctx, conn, broker.QueueEmail, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page.Messages {
			if m.ID == early.MessageID {
				dead = &m
				return true
			}
		}
		return false
	})
	if dead.Reason != broker.ReasonWaitedTooLong || dead.OrderID != o || dead.RoutingKey != events.OrderPaid ||
		!strings.Contains(dead.Error, "event #1 of order "+o) {
		t.Fatalf("dead-lettered as %+v", dead)
	}
}
