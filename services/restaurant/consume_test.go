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

func TestHandleRestaurantEvent(t *testing.T) {
	db := testenv.MustDB(t)
	c := newConsumer(zaptest.NewLogger(t), db)
	h := func(ctx context.Context, d broker.Delivery) error { return c.Handle(ctx, []broker.Delivery{d}) }
	ctx := context.Background()
	count := func(t *testing.T, restaurant, event string) int {
		t.Helper()
		var n int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM restaurant_notifications WHERE restaurant_id = $1 AND event_type = $2",
			restaurant, event).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("OKOncePerEvent", func(t *testing.T) {
		restaurant, orderID := "r-"+uuid.NewString(), uuid.NewString()
		placed := testenv.Delivery(t, broker.QueueRestaurant, events.OrderPlaced, orderID, events.Placed{RestaurantID: restaurant, TotalCents: 500})
		// order.paid as the payment service publishes it, and as events.Paid
		// alone (no restaurant: found from order.placed).
		paid := testenv.Delivery(t, broker.QueueRestaurant, events.OrderPaid, orderID, events.Paid{ChargeID: "ch_1", AmountCents: 500, RestaurantID: restaurant})
		paidBare := testenv.Delivery(t, broker.QueueRestaurant, events.OrderPaid, orderID, events.Paid{ChargeID: "ch_1", AmountCents: 500})
		cancelled := testenv.Delivery(t, broker.QueueRestaurant, events.OrderCancelled, orderID, events.StatusChanged{Status: "cancelled", From: "paid", RestaurantID: restaurant})
		arriving := testenv.Delivery(t, broker.QueueRestaurant, events.OrderRiderArriving, orderID, events.RiderArriving{RiderID: "r-7", RestaurantID: restaurant, DistanceM: 240})
		for _, d := range []broker.Delivery{placed, placed, paid, paidBare, paidBare, arriving, arriving, cancelled, cancelled} {
			if err := h(ctx, d); err != nil {
				t.Fatalf("%s: %v", d.RoutingKey, err)
			}
		}
		for event, want := range map[string]int{events.OrderPlaced: 1, events.OrderPaid: 2, events.OrderRiderArriving: 1, events.OrderCancelled: 1} {
			if n := count(t, restaurant, event); n != want {
				t.Errorf("%d %s notifications, want %d", n, event, want)
			}
		}
	})

	t.Run("ErrPaidBeforePlacedIsRetried", func(t *testing.T) {
		restaurant, orderID := "r-"+uuid.NewString(), uuid.NewString()
		paid := testenv.Delivery(t, broker.QueueRestaurant, events.OrderPaid, orderID, events.Paid{ChargeID: "ch_2", AmountCents: 700})
		if err := h(ctx, paid); err == nil || broker.IsPermanent(err) {
			t.Fatalf("order.paid before order.placed: err = %v, want a transient error", err)
		}
		// The failed attempt left no inbox row behind: once order.placed
		// is in, the retry records the payment.
		if err := h(ctx, testenv.Delivery(t, broker.QueueRestaurant, events.OrderPlaced, orderID, events.Placed{RestaurantID: restaurant, TotalCents: 700})); err != nil {
			t.Fatal(err)
		}
		if err := h(ctx, paid); err != nil {
			t.Fatal(err)
		}
		if n := count(t, restaurant, events.OrderPaid); n != 1 {
			t.Fatalf("%d order.paid notifications, want 1", n)
		}
	})

	t.Run("ErrMalformedIsPermanent", func(t *testing.T) {
		orderID := uuid.NewString()
		tests := []struct {
			name string
			give broker.Delivery
		}{
			{"NotJSON", broker.Delivery{MessageID: uuid.NewString(), Body: []byte("{")}},
			{"PlacedWithoutRestaurant", testenv.Delivery(t, broker.QueueRestaurant, events.OrderPlaced, orderID, events.Placed{TotalCents: 1})},
			{"OrderIDNotUUID", testenv.Delivery(t, broker.QueueRestaurant, events.OrderPlaced, "order-1", events.Placed{RestaurantID: "r", TotalCents: 1})},
			{"NotForThisQueue", testenv.Delivery(t, broker.QueueRestaurant, events.OrderAccepted, orderID, events.StatusChanged{Status: "accepted"})},
			{"DataOfAnotherShape", testenv.Delivery(t, broker.QueueRestaurant, events.OrderPlaced, orderID, map[string]any{"total_cents": "lots"})},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := h(ctx, tt.give); !broker.IsPermanent(err) {
					t.Fatalf("err = %v, want permanent", err)
				}
			})
		}
	})
}

func TestConsumerBindings(t *testing.T) {
	if err := newConsumer(zaptest.NewLogger(t), nil).CheckBindings(); err != nil {
		t.Fatal(err)
	}
}
