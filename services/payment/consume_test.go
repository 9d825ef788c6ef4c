package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// placedEvent builds an order.placed envelope for a new order.
func placedEvent(tb testing.TB, total int64) events.Envelope {
	tb.Helper()
	e, err := events.New(uuid.NewString(), events.OrderPlaced, uuid.NewString(), time.Now(), events.Placed{
		CustomerID: "c-" + uuid.NewString(), RestaurantID: "r-1", Email: "eater@example.com", TotalCents: total,
		Items: []events.Item{{SKU: "thali", Name: "Veg thali", Quantity: 1, UnitPriceCents: total}}})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func deliveryOf(tb testing.TB, e events.Envelope) broker.Delivery {
	tb.Helper()
	body, err := json.Marshal(e)
	if err != nil {
		tb.Fatal(err)
	}
	return broker.Delivery{Queue: broker.QueuePayment, MessageID: e.ID, RoutingKey: e.Type, Type: e.Type,
		CorrelationID: e.OrderID, Body: body, Attempt: 1}
}

// ledger is what payment wrote about one order.
type ledger struct {
	Payments int
	Status   string
	ChargeID string
	Outbox   []events.Envelope
}

func readLedger(tb testing.TB, db testDB, orderID string) ledger {
	tb.Helper()
	ctx := context.Background()
	var l ledger
	if err := db.QueryRow(ctx, `SELECT count(*), coalesce(min(status), ''), coalesce(min(charge_id), '')
		FROM payments WHERE order_id = $1`, orderID).Scan(&l.Payments, &l.Status, &l.ChargeID); err != nil {
		tb.Fatal(err)
	}
	rows, err := db.Query(ctx, "SELECT payload FROM outbox WHERE order_id = $1 ORDER BY id", orderID)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			tb.Fatal(err)
		}
		e, err := events.Decode(payload)
		if err != nil {
			tb.Fatalf("outbox payload: %v", err)
		}
		l.Outbox = append(l.Outbox, e)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return l
}

// handlerOf returns the payment consumer's handling of one delivery.
func handlerOf(tb testing.TB, db *pgxpool.Pool, gw Charger) func(context.Context, broker.Delivery) error {
	c := newConsumer(zaptest.NewLogger(tb), db, gw, nil)
	return func(ctx context.Context, d broker.Delivery) error { return c.Handle(ctx, []broker.Delivery{d}) }
}

func TestConsumerBindings(t *testing.T) {
	if err := newConsumer(zaptest.NewLogger(t), nil, nil, nil).CheckBindings(); err != nil {
		t.Fatal(err)
	}
}

func TestHandleOrderPlaced(t *testing.T) {
	db := testenv.MustDB(t)
	fake := gateway.NewFake(gateway.FakeConfig{DeclineAmountCents: 13})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	h := handlerOf(t, db, gateway.NewClient(srv.URL, srv.Client()))
	ctx := context.Background()

	t.Run("OKOnceWhenDeliveredTwice", func(t *testing.T) {
		e := placedEvent(t, 900)
		dropOutbox(t, db, e.OrderID)
		for i := 0; i < 2; i++ {
			if err := h(ctx, deliveryOf(t, e)); err != nil {
				t.Fatal(err)
			}
		}
		l := readLedger(t, db, e.OrderID)
		if l.Payments != 1 || l.Status != gateway.StatusSucceeded || len(l.Outbox) != 1 || l.Outbox[0].Type != events.OrderPaid {
			t.Fatalf("ledger = %+v, want one succeeded payment and one order.paid", l)
		}
		var p events.Paid
		if err := events.DecodeData(l.Outbox[0], &p); err != nil {
			t.Fatal(err)
		}
		if p.ChargeID != l.ChargeID || p.AmountCents != 900 || p.RestaurantID != "r-1" || p.Email != "eater@example.com" {
			t.Fatalf("order.paid data = %+v, payment charge %s", p, l.ChargeID)
		}
		if n := len(fake.Charges(e.OrderID)); n != 1 {
			t.Fatalf("%d charges at the provider, want 1", n)
		}
	})

	t.Run("OKChargedBeforeACrash", func(t *testing.T) {
		// The provider charged, then the service died before its commit:
		// the redelivered event must find that charge, not make another.
		e := placedEvent(t, 700)
		dropOutbox(t, db, e.OrderID)
		first, err := gateway.NewClient(srv.URL, srv.Client()).Charge(ctx,
			gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: 700, Currency: Currency}, e.OrderID)
		if err != nil {
			t.Fatal(err)
		}
		d := deliveryOf(t, e)
		d.Redelivered = true
		if err := h(ctx, d); err != nil {
			t.Fatal(err)
		}
		if l := readLedger(t, db, e.OrderID); l.ChargeID != first.ID || len(l.Outbox) != 1 {
			t.Fatalf("ledger = %+v, want the first charge %s announced once", l, first.ID)
		}
		if n := len(fake.Charges(e.OrderID)); n != 1 {
			t.Fatalf("%d charges at the provider, want 1", n)
		}
	})

	t.Run("OKSecondPlacedEventForTheSameOrder", func(t *testing.T) {
		// Another message id for an order already paid for: no second
		// outcome is announced.
		e := placedEvent(t, 500)
		dropOutbox(t, db, e.OrderID)
		again := e
		again.ID = uuid.NewString()
		for _, ev := range []events.Envelope{e, again} {
			if err := h(ctx, deliveryOf(t, ev)); err != nil {
				t.Fatal(err)
			}
		}
		if l := readLedger(t, db, e.OrderID); l.Payments != 1 || len(l.Outbox) != 1 {
			t.Fatalf("ledger = %+v, want one payment, one event", l)
		}
	})

	t.Run("Declined", func(t *testing.T) {
		e := placedEvent(t, 13)
		dropOutbox(t, db, e.OrderID)
		if err := h(ctx, deliveryOf(t, e)); err != nil {
			t.Fatal(err)
		}
		l := readLedger(t, db, e.OrderID)
		if l.Status != gateway.StatusDeclined || len(l.Outbox) != 1 || l.Outbox[0].Type != events.OrderPaymentFailed {
			t.Fatalf("ledger = %+v, want a declined payment and order.payment_failed", l)
		}
		var p events.PaymentFailed
		if err := events.DecodeData(l.Outbox[0], &p); err != nil || p.Reason == "" || p.Email != "eater@example.com" {
			t.Fatalf("order.payment_failed data = %+v (%v)", p, err)
		}
	})

	t.Run("ErrGatewayDownIsRetried", func(t *testing.T) {
		down := httptest.NewServer(gateway.NewFake(gateway.FakeConfig{FailRate: 1}))
		defer down.Close()
		e := placedEvent(t, 900)
		err := handlerOf(t, db, gateway.NewClient(down.URL, down.Client()))(ctx, deliveryOf(t, e))
		if err == nil || broker.IsPermanent(err) {
			t.Fatalf("err = %v, want a transient error", err)
		}
		if l := readLedger(t, db, e.OrderID); l.Payments != 0 || len(l.Outbox) != 0 {
			t.Fatalf("ledger = %+v after a failed charge, want nothing", l)
		}
		// Once the provider is back, the retry charges and announces.
		if err := h(ctx, deliveryOf(t, e)); err != nil {
			t.Fatal(err)
		}
		dropOutbox(t, db, e.OrderID)
		if l := readLedger(t, db, e.OrderID); l.Status != gateway.StatusSucceeded {
			t.Fatalf("ledger = %+v after the retry", l)
		}
	})

	t.Run("ErrMalformedIsPermanent", func(t *testing.T) {
		wrongType := placedEvent(t, 900)
		wrongType.Type = events.OrderPaid
		badOrder := placedEvent(t, 900)
		badOrder.OrderID = "not-a-uuid"
		tests := []struct {
			name string
			give []byte
		}{
			{"NotJSON", []byte(`{"id":`)},
			{"NoOrderID", []byte(`{"id":"x","type":"order.placed","occurred_at":"2026-01-01T00:00:00Z","data":{}}`)},
			{"OrderIDNotUUID", deliveryOf(t, badOrder).Body},
			{"WrongType", deliveryOf(t, wrongType).Body},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := h(ctx, broker.Delivery{MessageID: uuid.NewString(), Body: tt.give, Attempt: 1}); !broker.IsPermanent(err) {
					t.Fatalf("err = %v, want permanent", err)
				}
			})
		}
	})
}

// failingFor is a Charger that fails for one order and charges the rest.
type failingFor struct {
	Charger
	orderID string
}

func (f failingFor) Charge(ctx context.Context, req gateway.ChargeRequest, key string) (gateway.Charge, error) {
	if req.OrderID == f.orderID {
		return gateway.Charge{}, errors.New("provider timed out")
	}
	return f.Charger.Charge(ctx, req, key)
}

// TestHandleOrderPlacedBatch: a batch's charges are recorded together, and a
// charge that fails is retried alone while its neighbours are paid.
func TestHandleOrderPlacedBatch(t *testing.T) {
	db := testenv.MustDB(t)
	srv := httptest.NewServer(gateway.NewFake(gateway.FakeConfig{}))
	defer srv.Close()
	batch := []events.Envelope{placedEvent(t, 100), placedEvent(t, 200), placedEvent(t, 300)}
	var deliveries []broker.Delivery
	for _, e := range batch {
		dropOutbox(t, db, e.OrderID)
		deliveries = append(deliveries, deliveryOf(t, e))
	}
	c := newConsumer(zaptest.NewLogger(t), db, failingFor{gateway.NewClient(srv.URL, srv.Client()), batch[1].OrderID}, nil)
	err := c.Handle(context.Background(), deliveries)
	var f broker.Failures
	if !errors.As(err, &f) || len(f) != 1 || f[1] == nil || broker.IsPermanent(f[1]) {
		t.Fatalf("err = %v, want the second alone failed, transiently", err)
	}
	for i, e := range batch {
		l := readLedger(t, db, e.OrderID)
		if paid := l.Payments == 1 && len(l.Outbox) == 1; paid != (i != 1) {
			t.Errorf("order %d: ledger %+v", i, l)
		}
	}
	// Its retry is not taken for a duplicate.
	if err := c.Handle(context.Background(), deliveries[1:2]); err == nil {
		t.Fatal("retry with the provider still failing: err = nil")
	}
	if err := handlerOf(t, db, gateway.NewClient(srv.URL, srv.Client()))(context.Background(), deliveries[1]); err != nil {
		t.Fatal(err)
	}
	if l := readLedger(t, db, batch[1].OrderID); l.Payments != 1 || len(l.Outbox) != 1 {
		t.Fatalf("after the retry: ledger %+v", l)
	}
}
