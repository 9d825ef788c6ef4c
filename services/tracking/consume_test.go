package main

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// recorder is a Publisher that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	keys []string
}

func (r *recorder) Publish(_ context.Context, m broker.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, m.RoutingKey)
	return nil
}

// TestConsumeBatchOutOfOrder hands the tracking consumer one batch holding an
// order's events out of order, and a rider assignment older than one already
// stored: the order ends with its newest status, the destination of its
// order.placed and the newest rider, and one live update per order and type.
func TestConsumeBatchOutOfOrder(t *testing.T) {
	db := testenv.MustDB(t)
	ctx := context.Background()
	live := &recorder{}
	c := newConsumer(db, live, zaptest.NewLogger(t))
	orderID := uuid.NewString()
	at := time.Now().Add(-time.Minute)
	delivery := func(key string, when time.Time, data any) broker.Delivery {
		e, err := events.New(uuid.NewString(), key, orderID, when, data)
		if err != nil {
			t.Fatal(err)
		}
		body, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return broker.Delivery{Queue: broker.QueueTracking, MessageID: e.ID, RoutingKey: key, Type: key, CorrelationID: orderID, Body: body, Attempt: 1}
	}
	batch := []broker.Delivery{
		delivery(events.OrderRiderAssigned, at.Add(3*time.Second), events.RiderAssigned{RiderID: "rider-new"}),
		delivery(events.OrderPaid, at.Add(2*time.Second), events.Paid{ChargeID: "ch"}),
		delivery(events.OrderPlaced, at, events.Placed{DeliveryAddress: events.Address{Line1: "Dadar", Lat: 19.02, Lng: 72.84}}),
		delivery(events.OrderRiderAssigned, at.Add(time.Second), events.RiderAssigned{RiderID: "rider-old"}),
	}
	if err := c.Handle(ctx, batch); err != nil {
		t.Fatal(err)
	}
	o, err := loadOrder(ctx, db, orderID)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != events.StatusPaid || o.RiderID != "rider-new" || o.Destination == nil || o.Destination.Line1 != "Dadar" {
		t.Fatalf("stored %+v (destination %+v), want paid, rider-new, Dadar", o, o.Destination)
	}
	// Three types in the batch: one update each, after the commit.
	if len(live.keys) != 3 || live.keys[0] != orderKey(orderID) {
		t.Fatalf("live updates %v", live.keys)
	}
}
