package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func placedDelivery(t *testing.T, total int64) (broker.Delivery, string) {
	t.Helper()
	orderID := uuid.NewString()
	e, err := events.New(uuid.NewString(), events.OrderPlaced, orderID, time.Now(), events.Placed{CustomerID: "c", RestaurantID: "r", Email: "a@example.com", TotalCents: total})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(e)
	return broker.Delivery{Queue: broker.QueuePayment, MessageID: e.ID, RoutingKey: e.Type, CorrelationID: orderID, Body: body, Attempt: 1}, orderID
}

func TestHandleOrderPlaced(t *testing.T) {
	db := testenv.MustDB(t)
	fake := gateway.NewFake(gateway.FakeConfig{DeclineAmountCents: 13})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	h := handleOrderPlaced(zaptest.NewLogger(t), db, gateway.NewClient(srv.URL, srv.Client()))
	ctx := context.Background()
	outboxEvents := func(orderID string) []string {
		rows, err := db.Query(ctx, "SELECT routing_key FROM outbox WHERE order_id = $1 ORDER BY id", orderID)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for rows.Next() {
			var k string
			_ = rows.Scan(&k)
			keys = append(keys, k)
		}
		return keys
	}

	t.Run("OKOnceWhenDeliveredTwice", func(t *testing.T) {
		d, orderID := placedDelivery(t, 900)
		for i := 0; i < 2; i++ {
			if err := h(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		if keys := outboxEvents(orderID); len(keys) != 1 || keys[0] != events.OrderPaid {
			t.Fatalf("outbox = %v, want one order.paid", keys)
		}
		var n int
		_ = db.QueryRow(ctx, "SELECT count(*) FROM payments WHERE order_id = $1 AND status = 'succeeded'", orderID).Scan(&n)
		if n != 1 {
			t.Fatalf("%d payments, want 1", n)
		}
	})
	t.Run("Declined", func(t *testing.T) {
		d, orderID := placedDelivery(t, 13)
		if err := h(ctx, d); err != nil {
			t.Fatal(err)
		}
		if keys := outboxEvents(orderID); len(keys) != 1 || keys[0] != events.OrderPaymentFailed {
			t.Fatalf("outbox = %v, want one order.payment_failed", keys)
		}
	})
	t.Run("ErrGatewayDownIsRetried", func(t *testing.T) {
		down := httptest.NewServer(gateway.NewFake(gateway.FakeConfig{FailRate: 1}))
		defer down.Close()
		d, orderID := placedDelivery(t, 900)
		err := handleOrderPlaced(zaptest.NewLogger(t), db, gateway.NewClient(down.URL, down.Client()))(ctx, d)
		if err == nil || broker.IsPermanent(err) {
			t.Fatalf("err = %v, want a transient error", err)
		}
		if keys := outboxEvents(orderID); len(keys) != 0 {
			t.Fatalf("outbox = %v after a failed charge", keys)
		}
	})
	t.Run("ErrMalformedIsPermanent", func(t *testing.T) {
		err := h(ctx, broker.Delivery{MessageID: uuid.NewString(), Body: []byte(`{"id":"x"}`)})
		if !broker.IsPermanent(err) {
			t.Fatalf("err = %v, want permanent", err)
		}
	})
}
