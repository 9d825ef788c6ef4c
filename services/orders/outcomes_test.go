package main

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
)

// TestApplyOutcomes writes, in one batch of the projection, an order's
// order.paid, another's order.payment_failed, an order.paid for an order
// that does not exist, and a late outcome for an order already paid: the
// first two move, the unknown one and the late one change nothing.
func TestApplyOutcomes(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	store := NewStore(db, nil)
	mustTestMenu(t, store)
	place := func() string {
		o := Order{ID: uuid.NewString(), CustomerID: "c-" + uuid.NewString(), RestaurantID: "r-1", Email: "eater@example.com",
			Status: events.StatusPlaced, CreatedAt: time.Now().UTC()}
		req := placeRequest{CustomerID: o.CustomerID, RestaurantID: o.RestaurantID}
		lines := []line{{SKU: "biryani", Quantity: 1}}
		if _, err := store.Place(ctx, uuid.NewString(), req, lines, o, func(Order) ([]byte, error) { return []byte("{}"), nil }); err != nil {
			t.Fatal(err)
		}
		return o.ID
	}
	paid, failed, late := place(), place(), place()
	announce := func(key, orderID string, data any) {
		err := postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			_, err := outbox.Enqueue(ctx, tx, key, orderID, time.Now(), data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	announce(events.OrderPaid, late, events.Paid{})
	announce(events.OrderPaid, paid, events.Paid{ChargeID: "ch_1"})
	announce(events.OrderPaymentFailed, failed, events.PaymentFailed{Reason: "declined"})
	announce(events.OrderPaid, uuid.NewString(), events.Paid{})
	announce(events.OrderPaymentFailed, late, events.PaymentFailed{Reason: "late"})

	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = paymentOutcomes().Run(rctx, db, zaptest.NewLogger(t)) }()
	defer func() { cancel(); <-done }()
	want := map[string]string{paid: events.StatusPaid, failed: events.StatusPaymentFailed, late: events.StatusPaid}
	testenv.Eventually(t, 10*time.Second, "outcomes applied", func() bool {
		for id, status := range want {
			if o, err := store.Get(ctx, id); err != nil || o.Status != status {
				return false
			}
		}
		return true
	})
	for id, status := range want {
		o, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(o.History) != 2 || o.History[1].Status != status {
			t.Errorf("order %s: history %v; want placed then %s", id, o.History, status)
		}
	}
}
