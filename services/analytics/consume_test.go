package main

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func TestHandleEventBatch(t *testing.T) {
	db := testenv.MustDB(t)
	h := newConsumer(zaptest.NewLogger(t), db).Handle
	ctx := context.Background()
	count := func(t *testing.T, orderID string) (events, inbox int) {
		t.Helper()
		if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM analytics_events WHERE order_id = $1),
			(SELECT count(*) FROM processed_messages p JOIN analytics_events a ON a.message_id = p.message_id
				WHERE p.consumer = 'analytics' AND a.order_id = $1)`, orderID).Scan(&events, &inbox); err != nil {
			t.Fatal(err)
		}
		return events, inbox
	}

	t.Run("OKOnceWhenRedelivered", func(t *testing.T) {
		orderID := uuid.NewString()
		var batch []broker.Delivery
		for _, key := range []string{events.OrderPlaced, events.OrderPaid, events.OrderAccepted} {
			batch = append(batch, testenv.Delivery(t, broker.QueueAnalytics, key, orderID, map[string]string{"k": key}))
		}
		if err := h(ctx, batch); err != nil {
			t.Fatal(err)
		}
		// A redelivered part of the batch, with a new event and one
		// delivered twice within the same batch.
		delivered := testenv.Delivery(t, broker.QueueAnalytics, events.OrderDelivered, orderID, events.StatusChanged{Status: "delivered"})
		if err := h(ctx, append(batch[1:], delivered, delivered)); err != nil {
			t.Fatal(err)
		}
		// The events are their own inbox: no processed_messages rows.
		if ev, in := count(t, orderID); ev != 4 || in != 0 {
			t.Fatalf("%d events, %d inbox rows; want 4 and 0", ev, in)
		}
		var data string
		if err := db.QueryRow(ctx, "SELECT data->>'k' FROM analytics_events WHERE message_id = $1", batch[1].MessageID).Scan(&data); err != nil || data != events.OrderPaid {
			t.Fatalf("stored data k = %q (%v)", data, err)
		}
	})

	t.Run("ErrMalformedIsPermanent", func(t *testing.T) {
		orderID := uuid.NewString()
		good := testenv.Delivery(t, broker.QueueAnalytics, events.OrderPlaced, orderID, map[string]string{})
		tests := []struct {
			name string
			give []broker.Delivery
		}{
			{"NotJSON", []broker.Delivery{{MessageID: uuid.NewString(), Body: []byte("{")}}},
			{"InABatch", []broker.Delivery{good, {MessageID: uuid.NewString(), Body: []byte(`{"id":"x"}`)}}},
			{"OrderIDNotUUID", []broker.Delivery{testenv.Delivery(t, broker.QueueAnalytics, events.OrderPlaced, "o-1", map[string]string{})}},
			// Valid JSON that jsonb refuses.
			{"NulInData", []broker.Delivery{testenv.Delivery(t, broker.QueueAnalytics, events.OrderPlaced, orderID, map[string]string{"s": "a\x00b"})}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := h(ctx, tt.give); !testenv.AllPermanent(err, len(tt.give)) {
					t.Fatalf("err = %v, want the malformed one permanent", err)
				}
			})
		}
		// The good event of the mixed batch is written; nothing else is.
		if ev, _ := count(t, orderID); ev != 1 {
			t.Fatalf("%d events written, want 1", ev)
		}
	})
}

func TestConsumerBindings(t *testing.T) {
	if err := newConsumer(zaptest.NewLogger(t), nil).CheckBindings(); err != nil {
		t.Fatal(err)
	}
}
