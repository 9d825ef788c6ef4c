package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func TestHandleRestaurantEvent(t *testing.T) {
	db := testenv.MustDB(t)
	h := handleRestaurantEvent(db)
	ctx := context.Background()
	restaurant, orderID := "r-"+uuid.NewString(), uuid.NewString()
	deliver := func(key string, data any) broker.Delivery {
		e, err := events.New(uuid.NewString(), key, orderID, time.Now(), data)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(e)
		return broker.Delivery{MessageID: e.ID, RoutingKey: key, Body: body, Attempt: 1}
	}
	placed := deliver(events.OrderPlaced, events.Placed{RestaurantID: restaurant, TotalCents: 500})
	cancelled := deliver(events.OrderCancelled, events.StatusChanged{Status: "cancelled", RestaurantID: restaurant})
	for _, d := range []broker.Delivery{placed, placed, cancelled} { // placed delivered twice
		if err := h(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM restaurant_notifications WHERE restaurant_id = $1", restaurant).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d notifications, want 2 (placed once, cancelled once)", n)
	}
	if err := h(ctx, deliver(events.OrderPlaced, events.Placed{})); !broker.IsPermanent(err) {
		t.Fatalf("an order.placed without restaurant: err = %v, want permanent", err)
	}
}
