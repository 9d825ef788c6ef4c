package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// message builds the message the outbox relay would publish for a new event.
func message(tb testing.TB, exchange, key, orderID string) broker.Message {
	tb.Helper()
	e, err := events.New(uuid.NewString(), key, orderID, time.Now(), events.StatusChanged{Status: "accepted", From: "paid"})
	if err != nil {
		tb.Fatal(err)
	}
	body, _ := json.Marshal(e)
	rk := key
	if exchange == "" {
		rk = broker.QueueAnalytics
	}
	return broker.Message{Exchange: exchange, RoutingKey: rk, MessageID: e.ID, Type: key, CorrelationID: orderID, Body: body}
}

func publishAll(tb testing.TB, pub *broker.Publisher, msgs []broker.Message) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acked, err := pub.PublishBatch(ctx, msgs)
	if err != nil {
		tb.Fatal(err)
	}
	for i, ok := range acked {
		if !ok {
			tb.Fatalf("message %d not confirmed", i)
		}
	}
}

// TestRun runs the service against the real broker and database: events
// published to the orders exchange are written in batches; a malformed one
// among them is dead-lettered and the others still written.
func TestRun(t *testing.T) {
	db := testenv.MustDB(t)
	testenv.MustRun(t, run, nil)
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()
	ctx := context.Background()
	stored := func(orderID string) (rows, statements int) {
		// received_at defaults to now(), the transaction's start: rows
		// written by one statement share it.
		if err := db.QueryRow(ctx, "SELECT count(*), count(DISTINCT received_at) FROM analytics_events WHERE order_id = $1",
			orderID).Scan(&rows, &statements); err != nil {
			t.Fatal(err)
		}
		return rows, statements
	}

	t.Run("OKBatched", func(t *testing.T) {
		orderID := uuid.NewString()
		const n = 30
		var msgs []broker.Message
		for i := 0; i < n; i++ {
			msgs = append(msgs, message(t, broker.ExchangeOrders, events.OrderAccepted, orderID))
		}
		publishAll(t, pub, msgs)
		var rows, statements int
		testenv.Eventually(t, 20*time.Second, "events stored", func() bool {
			rows, statements = stored(orderID)
			return rows == n
		})
		if statements >= n {
			t.Fatalf("%d events written by %d statements: not batched", rows, statements)
		}
	})

	t.Run("ErrMalformedDeadLetteredOthersStored", func(t *testing.T) {
		orderID := uuid.NewString()
		bad := uuid.NewString()
		// Straight to the analytics queue, so no other consumer gets it.
		msgs := []broker.Message{
			message(t, "", events.OrderPickedUp, orderID),
			{Exchange: "", RoutingKey: broker.QueueAnalytics, MessageID: bad, Type: events.OrderPickedUp, Body: []byte(`{"id":`)},
			message(t, "", events.OrderPickedUp, orderID),
		}
		publishAll(t, pub, msgs)
		m := testenv.MustDeadLettered(t, conn, broker.QueueAnalytics, bad)
		if m.Headers[broker.HeaderReason] != broker.ReasonPermanent {
			t.Fatalf("dead-letter reason = %v, want %s", m.Headers[broker.HeaderReason], broker.ReasonPermanent)
		}
		testenv.Eventually(t, 20*time.Second, "the good events stored", func() bool {
			rows, _ := stored(orderID)
			return rows == 2
		})
	})
}
