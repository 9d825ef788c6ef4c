package main

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func TestConsumerBindings(t *testing.T) {
	if err := newConsumer(zaptest.NewLogger(t), nil).CheckBindings(); err != nil {
		t.Fatal(err)
	}
}

// TestApplyOutcomeBatch hands the order-status consumer one batch with an
// order's order.paid, another order's order.payment_failed, an order.paid
// for an order that does not exist, and a late outcome for an order already
// paid: the first two move, the unknown one alone is dead-lettered, the late
// one changes nothing.
func TestApplyOutcomeBatch(t *testing.T) {
	db := testenv.MustDB(t)
	ctx := context.Background()
	store := NewStore(db, nil)
	place := func() string {
		o := Order{ID: uuid.NewString(), CustomerID: "c-" + uuid.NewString(), RestaurantID: "r-1", Email: "eater@example.com",
			Items: []events.Item{{SKU: "thali", Name: "Thali", Quantity: 1, UnitPriceCents: 100}}, TotalCents: 100,
			Status: events.StatusPlaced, CreatedAt: time.Now().UTC()}
		req := placeRequest{CustomerID: o.CustomerID}
		if _, err := store.Place(ctx, uuid.NewString(), req, o, func(Order) ([]byte, error) { return []byte("{}"), nil }); err != nil {
			t.Fatal(err)
		}
		return o.ID
	}
	paid, failed, late := place(), place(), place()
	c := newConsumer(zaptest.NewLogger(t), db)
	if err := c.Handle(ctx, []broker.Delivery{testenv.Delivery(t, broker.QueueOrderStatus, events.OrderPaid, late, events.Paid{})}); err != nil {
		t.Fatal(err)
	}
	batch := []broker.Delivery{
		testenv.Delivery(t, broker.QueueOrderStatus, events.OrderPaid, paid, events.Paid{ChargeID: "ch_1"}),
		testenv.Delivery(t, broker.QueueOrderStatus, events.OrderPaymentFailed, failed, events.PaymentFailed{Reason: "declined"}),
		testenv.Delivery(t, broker.QueueOrderStatus, events.OrderPaid, uuid.NewString(), events.Paid{}),
		testenv.Delivery(t, broker.QueueOrderStatus, events.OrderPaymentFailed, late, events.PaymentFailed{Reason: "late"}),
	}
	err := c.Handle(ctx, batch)
	f, ok := err.(broker.Failures)
	if !ok || len(f) != 1 || !broker.IsPermanent(f[2]) {
		t.Fatalf("err = %v, want the unknown order's event alone dead-lettered", err)
	}
	for id, want := range map[string]string{paid: events.StatusPaid, failed: events.StatusPaymentFailed, late: events.StatusPaid} {
		o, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if o.Status != want || o.History[len(o.History)-1].Status != want {
			t.Errorf("order %s: status %s, history %v; want %s", id, o.Status, o.History, want)
		}
	}
}
