package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
func handlerOf(tb testing.TB, db *pgxpool.Pool, gw Provider) func(context.Context, broker.Delivery) error {
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

	t.Run("InvalidAmountFails", func(t *testing.T) {
		// The API refuses a zero total; one that comes anyway fails its
		// payment, with no call to the provider, instead of waiting in a
		// DLQ with its order placed for ever.
		for _, total := range []int64{0, -5} {
			e := placedEvent(t, total)
			dropOutbox(t, db, e.OrderID)
			if err := h(ctx, deliveryOf(t, e)); err != nil {
				t.Fatal(err)
			}
			l := readLedger(t, db, e.OrderID)
			if l.Status != paymentFailed || len(l.Outbox) != 1 || l.Outbox[0].Type != events.OrderPaymentFailed || len(fake.Charges(e.OrderID)) != 0 {
				t.Fatalf("total %d: ledger = %+v, want a failed payment, order.payment_failed and no charge", total, l)
			}
		}
	})

	t.Run("RejectedFails", func(t *testing.T) {
		// The provider refuses the request for good (here: the order's
		// key already charged another amount): order.payment_failed.
		e := placedEvent(t, 800)
		dropOutbox(t, db, e.OrderID)
		if _, err := gateway.NewClient(srv.URL, srv.Client()).Charge(ctx,
			gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: 801, Currency: Currency}, e.OrderID); err != nil {
			t.Fatal(err)
		}
		if err := h(ctx, deliveryOf(t, e)); err != nil {
			t.Fatal(err)
		}
		if l := readLedger(t, db, e.OrderID); l.Status != paymentFailed || len(l.Outbox) != 1 || l.Outbox[0].Type != events.OrderPaymentFailed {
			t.Fatalf("ledger = %+v, want a failed payment and order.payment_failed", l)
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

// failingFor is a Provider that fails one order's charge and charges the
// rest.
type failingFor struct {
	Provider
	orderID string
}

func (f failingFor) Charge(ctx context.Context, req gateway.ChargeRequest, key string) (gateway.Charge, error) {
	if req.OrderID == f.orderID {
		return gateway.Charge{}, errors.New("provider timed out")
	}
	return f.Provider.Charge(ctx, req, key)
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

// lying is a provider whose charges say another amount than asked.
type lying struct{ Provider }

func (l lying) Charge(ctx context.Context, req gateway.ChargeRequest, key string) (gateway.Charge, error) {
	return gateway.Charge{ID: "ch_lie", OrderID: req.OrderID, AmountCents: req.AmountCents + 1, Currency: req.Currency,
		Status: gateway.StatusSucceeded}, fmt.Errorf("%w: 1 paisa more", gateway.ErrMismatch)
}

// TestChargeOfAnotherAmountIsNotPaid: an answer about another amount is not
// a payment: the event is dead-lettered for an operator, nothing recorded.
func TestChargeOfAnotherAmountIsNotPaid(t *testing.T) {
	db := testenv.MustDB(t)
	e := placedEvent(t, 900)
	err := handlerOf(t, db, lying{})(context.Background(), deliveryOf(t, e))
	if !broker.IsPermanent(err) {
		t.Fatalf("err = %v, want permanent", err)
	}
	if l := readLedger(t, db, e.OrderID); l.Payments != 0 || len(l.Outbox) != 0 {
		t.Fatalf("ledger = %+v, want nothing", l)
	}
}

// cancelledEvent builds the order.cancelled of e's order.
func cancelledEvent(tb testing.TB, e events.Envelope) events.Envelope {
	tb.Helper()
	c, err := events.New(uuid.NewString(), events.OrderCancelled, e.OrderID, time.Now(), events.StatusChanged{
		Status: "cancelled", From: "placed", RestaurantID: "r-1", Email: "eater@example.com"})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// money is what the provider and payment hold of one order.
type money struct {
	Charges, Refunds int
	Payment          string
	Refunded         bool
	Events           []string
}

func readMoney(tb testing.TB, db testDB, fake *gateway.Fake, orderID string) money {
	tb.Helper()
	l := readLedger(tb, db, orderID)
	m := money{Refunds: len(fake.Refunds(orderID)), Payment: l.Status}
	for _, c := range fake.Charges(orderID) {
		if c.Status == gateway.StatusSucceeded {
			m.Charges++
		}
	}
	if err := db.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM refunds WHERE order_id = $1)", orderID).Scan(&m.Refunded); err != nil {
		tb.Fatal(err)
	}
	for _, ev := range l.Outbox {
		m.Events = append(m.Events, ev.Type)
	}
	return m
}

// TestCancellations: a cancelled order keeps no money, whichever of its
// order.placed and order.cancelled payment sees first, however often.
func TestCancellations(t *testing.T) {
	db := testenv.MustDB(t)
	fake := gateway.NewFake(gateway.FakeConfig{})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	client := gateway.NewClient(srv.URL, srv.Client())
	h := handlerOf(t, db, client)
	ctx := context.Background()
	handle := func(t *testing.T, envs ...events.Envelope) {
		t.Helper()
		for _, e := range envs {
			if err := h(ctx, deliveryOf(t, e)); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := func(t *testing.T, orderID string, w money) {
		t.Helper()
		if got := readMoney(t, db, fake, orderID); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("money = %+v, want %+v", got, w)
		}
	}

	t.Run("AfterTheChargeRefundsOnce", func(t *testing.T) {
		e := placedEvent(t, 900)
		dropOutbox(t, db, e.OrderID)
		c := cancelledEvent(t, e)
		handle(t, e, c, c)
		again := c
		again.ID = uuid.NewString() // another message for the same cancellation
		handle(t, again)
		want(t, e.OrderID, money{Charges: 1, Refunds: 1, Payment: paymentSucceeded, Refunded: true,
			Events: []string{events.OrderPaid, events.OrderRefunded}})
		var r events.Refunded
		if err := events.DecodeData(readLedger(t, db, e.OrderID).Outbox[1], &r); err != nil || r.AmountCents != 900 ||
			r.RefundID != fake.Refunds(e.OrderID)[0].ID || r.Email != "eater@example.com" || r.RestaurantID != "r-1" {
			t.Fatalf("order.refunded data = %+v (%v)", r, err)
		}
	})
	t.Run("BeforeTheChargeNeverCharges", func(t *testing.T) {
		// order.cancelled first (order.placed waiting for a retry, say).
		e := placedEvent(t, 900)
		dropOutbox(t, db, e.OrderID)
		handle(t, cancelledEvent(t, e), e)
		want(t, e.OrderID, money{Payment: paymentCancelled})
		// And the provider will never take the key: a charge attempt
		// that slipped through anyway would be refused.
		if _, err := client.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: 900, Currency: Currency}, e.OrderID); !errors.Is(err, gateway.ErrVoided) {
			t.Fatalf("charge with a voided key: %v", err)
		}
	})
	t.Run("OrderAlreadyCancelledNeverCharges", func(t *testing.T) {
		// order.placed first, but the order was cancelled meanwhile (its
		// order.cancelled still queued behind): no charge.
		e := placedEvent(t, 900)
		dropOutbox(t, db, e.OrderID)
		mustCancelledOrder(t, db, e.OrderID)
		handle(t, e)
		want(t, e.OrderID, money{})
		handle(t, cancelledEvent(t, e))
		want(t, e.OrderID, money{Payment: paymentCancelled})
	})
	t.Run("ChargeLostInACrashIsRefunded", func(t *testing.T) {
		// An attempt charged, then died before recording it; the order is
		// cancelled before the redelivery: the charge turns up when the
		// key is voided, and is refunded.
		e := placedEvent(t, 700)
		dropOutbox(t, db, e.OrderID)
		if _, err := client.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: 700, Currency: Currency}, e.OrderID); err != nil {
			t.Fatal(err)
		}
		mustCancelledOrder(t, db, e.OrderID)
		handle(t, cancelledEvent(t, e), e)
		want(t, e.OrderID, money{Charges: 1, Refunds: 1, Payment: paymentSucceeded, Refunded: true, Events: []string{events.OrderRefunded}})
	})
	t.Run("DeclinedNothingToRefund", func(t *testing.T) {
		declining := httptest.NewServer(gateway.NewFake(gateway.FakeConfig{DeclineAmountCents: 13}))
		defer declining.Close()
		h := handlerOf(t, db, gateway.NewClient(declining.URL, declining.Client()))
		e := placedEvent(t, 13)
		dropOutbox(t, db, e.OrderID)
		for _, ev := range []events.Envelope{e, cancelledEvent(t, e)} {
			if err := h(ctx, deliveryOf(t, ev)); err != nil {
				t.Fatal(err)
			}
		}
		if l := readLedger(t, db, e.OrderID); l.Status != paymentDeclined || len(l.Outbox) != 1 {
			t.Fatalf("ledger = %+v, want the decline only", l)
		}
	})
}

// mustCancelledOrder stores a cancelled order with id, as the orders
// service would have, removed when the test ends.
func mustCancelledOrder(tb testing.TB, db testDB, id string) {
	tb.Helper()
	ctx := context.Background()
	if _, err := db.Exec(ctx, `INSERT INTO orders (id, customer_id, restaurant_id, email, items, delivery_address, total_cents, status, created_at, updated_at)
		VALUES ($1, 'c', 'r-1', 'eater@example.com', '[]', '{}', 900, 'cancelled', now(), now())`, id); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _, _ = db.Exec(context.Background(), "DELETE FROM orders WHERE id = $1", id) })
}

// TestCancelRacesCharge hands payment an order's order.placed and its
// order.cancelled in two batches at once, with a slow provider, in both
// orders: the order ends with no money kept, charged and refunded once or
// never charged at all.
func TestCancelRacesCharge(t *testing.T) {
	db := testenv.MustDB(t)
	fake := gateway.NewFake(gateway.FakeConfig{Latency: 200 * time.Millisecond})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	c := newConsumer(zaptest.NewLogger(t), db, gateway.NewClient(srv.URL, srv.Client()), nil)
	for _, cancelFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("CancelFirst=", cancelFirst), func(t *testing.T) {
			e := placedEvent(t, 900)
			dropOutbox(t, db, e.OrderID)
			first, second := deliveryOf(t, e), deliveryOf(t, cancelledEvent(t, e))
			if cancelFirst {
				first, second = second, first
			}
			errs := make(chan error, 2)
			go func() { errs <- c.Handle(context.Background(), []broker.Delivery{first}) }()
			time.Sleep(50 * time.Millisecond) // the first holds the order's lock, or its provider call is under way
			go func() { errs <- c.Handle(context.Background(), []broker.Delivery{second}) }()
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			m := readMoney(t, db, fake, e.OrderID)
			if m.Charges != m.Refunds || m.Charges > 1 || (cancelFirst && m.Charges != 0) {
				t.Fatalf("money = %+v: a cancelled order kept money, or was charged after its cancellation", m)
			}
		})
	}
}
