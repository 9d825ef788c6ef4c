package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// testDB is what the tests read the database through.
type testDB interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// dropOutbox removes, when the test ends, the events it made payment write
// for orders that exist nowhere else, so that no outbox relay (an orders
// service running meanwhile) announces them to the other consumers.
func dropOutbox(tb testing.TB, db testDB, orderID string) {
	tb.Helper()
	tb.Cleanup(func() {
		if _, err := db.Exec(context.Background(), "DELETE FROM outbox WHERE order_id = $1", orderID); err != nil {
			tb.Errorf("clean outbox: %v", err)
		}
	})
}

// TestRun runs the service against the real broker and database: an
// order.placed published to the orders exchange is charged and its
// order.paid written to the outbox; garbage is dead-lettered at once.
//
// The queue is shared with every payment service on this broker (the e2e
// stack, make run), and any of them may take the event, charging it at its
// own provider: the test checks the effect they all record, in Postgres.
// The handler tests check the charges.
func TestRun(t *testing.T) {
	db := testenv.MustDB(t)
	fake := gateway.NewFake(gateway.FakeConfig{DeclineAmountCents: 13})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	testenv.MustRun(t, run, map[string]string{"PAYMENT_GATEWAY_URL": srv.URL})
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()

	t.Run("OK", func(t *testing.T) {
		e := placedEvent(t, 4500)
		dropOutbox(t, db, e.OrderID)
		body, _ := json.Marshal(e)
		testenv.Publish(t, pub, broker.ExchangeOrders, e.Type, e.ID, e.OrderID, body)
		var l ledger
		testenv.Eventually(t, 20*time.Second, "payment recorded", func() bool {
			l = readLedger(t, db, e.OrderID)
			return l.Payments == 1
		})
		if l.Status != gateway.StatusSucceeded || l.ChargeID == "" || len(l.Outbox) != 1 || l.Outbox[0].Type != events.OrderPaid {
			t.Fatalf("ledger = %+v", l)
		}
	})

	t.Run("ErrMalformedDeadLettered", func(t *testing.T) {
		id := uuid.NewString()
		// Straight to the payment queue, so that no other consumer gets it.
		testenv.Publish(t, pub, "", broker.QueuePayment, id, "", []byte(`{"not":"an envelope"`))
		m := testenv.MustDeadLettered(t, conn, broker.QueuePayment, id)
		if m.Headers[broker.HeaderReason] != broker.ReasonPermanent {
			t.Fatalf("dead-letter reason = %v, want %s", m.Headers[broker.HeaderReason], broker.ReasonPermanent)
		}
	})
}
