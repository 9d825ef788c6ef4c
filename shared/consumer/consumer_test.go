package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
)

// TestHandle drives a consumer of the restaurant-notify queue's types with
// batches that mix what a queue can hold: new events, redeliveries, copies
// within a batch, garbage, a type nobody routes, and an event its handler
// fails.
func TestHandle(t *testing.T) {
	db := testenv.MustDB(t)
	ctx := context.Background()
	var seen []string // event ids the handlers were given, in order
	var committed []string
	fail := map[string]error{}
	c := New(broker.QueueRestaurant, db, zaptest.NewLogger(t),
		On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Placed]) error {
			for _, e := range batch {
				seen = append(seen, e.ID)
				if err := fail[e.ID]; err != nil {
					e.Fail(err)
					continue
				}
				AfterCommit(ctx, func() { committed = append(committed, e.ID) })
			}
			return nil
		}),
		On(events.OrderPaid, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Paid]) error {
			for _, e := range batch {
				seen = append(seen, e.ID)
			}
			return nil
		}),
	)
	delivery := func(key string, data any) broker.Delivery {
		return testenv.Delivery(t, broker.QueueRestaurant, key, uuid.NewString(), data)
	}

	t.Run("OKEachNewEventOnce", func(t *testing.T) {
		seen, committed = nil, nil
		placed, paid := delivery(events.OrderPlaced, events.Placed{}), delivery(events.OrderPaid, events.Paid{})
		if err := c.Handle(ctx, []broker.Delivery{paid, placed, placed}); err != nil {
			t.Fatal(err)
		}
		// By type, in the order each type first arrived; the copy once.
		if want := []string{paid.MessageID, placed.MessageID}; !slices.Equal(seen, want) {
			t.Fatalf("handled %v, want %v", seen, want)
		}
		if !slices.Equal(committed, []string{placed.MessageID}) {
			t.Fatalf("after commit: %v", committed)
		}
		seen = nil
		fresh := delivery(events.OrderPlaced, events.Placed{})
		if err := c.Handle(ctx, []broker.Delivery{placed, fresh, paid}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(seen, []string{fresh.MessageID}) {
			t.Fatalf("redelivered batch: handled %v, want only %s", seen, fresh.MessageID)
		}
	})

	t.Run("ErrOneFailsAlone", func(t *testing.T) {
		seen = nil
		good, bad := delivery(events.OrderPlaced, events.Placed{}), delivery(events.OrderPlaced, events.Placed{})
		fail[bad.MessageID] = errors.New("provider down")
		garbage := broker.Delivery{MessageID: uuid.NewString(), Body: []byte("{")}
		unrouted := delivery(events.OrderAccepted, events.StatusChanged{})
		err := c.Handle(ctx, []broker.Delivery{good, bad, garbage, unrouted})
		var f broker.Failures
		if !errors.As(err, &f) || len(f) != 3 || broker.IsPermanent(f[1]) || !broker.IsPermanent(f[2]) || !broker.IsPermanent(f[3]) {
			t.Fatalf("err = %v, want #1 retried and #2, #3 dead-lettered", err)
		}
		// The failed one's inbox record was withdrawn: its retry runs.
		delete(fail, bad.MessageID)
		seen = nil
		if err := c.Handle(ctx, []broker.Delivery{good, bad}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(seen, []string{bad.MessageID}) {
			t.Fatalf("retry: handled %v, want only %s", seen, bad.MessageID)
		}
	})

	t.Run("ErrBatchOfOneIsPlain", func(t *testing.T) {
		err := c.Handle(ctx, []broker.Delivery{{MessageID: uuid.NewString(), Body: []byte("{")}})
		if _, isFailures := err.(broker.Failures); isFailures || !broker.IsPermanent(err) {
			t.Fatalf("err = %#v, want the permanent error itself", err)
		}
	})
}

func TestCheckBindings(t *testing.T) {
	c := New(broker.QueueRestaurant, nil, zaptest.NewLogger(t),
		On(events.OrderPlaced, func(context.Context, pgx.Tx, []Event[events.Placed]) error { return nil }))
	if err := c.CheckBindings(); err == nil {
		t.Fatal("a consumer routing one of its queue's three bound types passed")
	}
}

// TestOutsideWorkHoldsNoTransactionID: while a route does its outside work
// (here it waits), what other transactions commit to the outbox can be read
// in commit order; a consumer that wrote its inbox first would hold every
// reader back until it committed.
func TestOutsideWorkHoldsNoTransactionID(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	working, proceed := make(chan struct{}), make(chan struct{})
	c := New(broker.QueueEmail, db, zaptest.NewLogger(t),
		On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Placed]) error {
			close(working)
			<-proceed
			_, err := tx.Exec(ctx, "INSERT INTO emails_sent (message_id, order_id, recipient, kind) VALUES ($1, $2, 'a@example.com', 'placed')",
				batch[0].ID, batch[0].OrderID)
			return err
		}))
	done := make(chan error, 1)
	go func() {
		done <- c.Handle(ctx, []broker.Delivery{testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, uuid.NewString(), events.Placed{})})
	}()
	<-working
	var id string
	err := postgres.InTx(ctx, db, func(tx pgx.Tx) error {
		var err error
		id, err = outbox.Enqueue(ctx, tx, events.OrderPaid, uuid.NewString(), time.Now(), events.Paid{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	entries, _, err := outbox.Read(ctx, db, outbox.Position{}, nil, 10)
	close(proceed)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Event.ID != id {
		t.Fatalf("read %d entries while the consumer worked, want the one committed meanwhile", len(entries))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestEventOlderThanTheInbox: an event older than the inbox keeps records
// is dead-lettered, unless an operator replayed it; a consumer whose
// effects are their own inbox takes it.
func TestEventOlderThanTheInbox(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	var handled []string
	route := On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []Event[events.Placed]) error {
		for _, e := range batch {
			handled = append(handled, e.ID)
		}
		return nil
	})
	old := func() broker.Delivery {
		e, err := events.New(events.NewID(), events.OrderPlaced, uuid.NewString(), time.Now().Add(-8*24*time.Hour), events.Placed{})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(e)
		return broker.Delivery{Queue: broker.QueueEmail, MessageID: e.ID, RoutingKey: e.Type, Type: e.Type, CorrelationID: e.OrderID, Body: body, Attempt: 1}
	}
	c := New(broker.QueueEmail, db, zaptest.NewLogger(t), route).InboxRetention(7 * 24 * time.Hour)
	if err := c.Handle(ctx, []broker.Delivery{old()}); !broker.IsPermanent(err) || len(handled) != 0 {
		t.Fatalf("an 8-day-old event: %v, handled %v; want it dead-lettered", err, handled)
	}
	replayed := old()
	replayed.Headers = amqp.Table{broker.HeaderReplays: int32(1)}
	if err := c.Handle(ctx, []broker.Delivery{replayed}); err != nil || len(handled) != 1 {
		t.Fatalf("a replayed 8-day-old event: %v, handled %v; want it handled", err, handled)
	}
	keyed := New(broker.QueueRestaurant, db, zaptest.NewLogger(t), route).EffectsKeyedByEvent()
	if err := keyed.Handle(ctx, []broker.Delivery{old()}); err != nil || len(handled) != 2 {
		t.Fatalf("an old event to a consumer keyed by event: %v, handled %v; want it handled", err, handled)
	}
}
