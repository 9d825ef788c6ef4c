package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// TestConsumerKilledMidMessage SIGKILLs the payment service while it holds
// unacknowledged charges, restarts it, and checks that every order was
// charged, paid and announced exactly once.
func TestConsumerKilledMidMessage(t *testing.T) {
	db := mustDB(t)
	// Charges slow enough to be caught in flight: the management API
	// refreshes its figures every 5 s.
	gatewayConfig(t, `{"latency_ms": 8000}`)
	defer gatewayConfig(t, `{"latency_ms": 5}`)
	var ids []string
	for i := 0; i < 8; i++ {
		ids = append(ids, placeOrder(t, newKey(), orderJSON("c-kill-"+uuid.NewString(), "r-kill", 1200)).ID)
	}
	eventually(t, 20*time.Second, "payment holding messages", func() error {
		if q := queue(t, "payment"); q.Unacked == 0 {
			return fmt.Errorf("nothing in flight: %+v", q)
		}
		return nil
	})
	payment := dabba.Proc("payment")
	payment.Kill()
	gatewayConfig(t, `{"latency_ms": 5}`)
	if err := payment.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := payment.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	waitPaid(t, 60*time.Second, ids...)
	for _, id := range ids {
		wantExactlyOnce(t, db, id, 30*time.Second)
	}
}

func gatewayConfig(t testing.TB, body string) {
	t.Helper()
	if code, _, b := do(t, http.MethodPut, base(ports.Gateway)+"/v1/admin/config", map[string]string{"Content-Type": "application/json"}, body); code != 204 {
		t.Fatalf("gateway config = %d %s", code, b)
	}
}

// TestDuplicateEventHasOneEffect republishes an order's order.placed by
// hand, twice, with its message id, while the four consumers are down (so
// the copies are certainly waiting for them), and checks that once they
// drained every effect still happened exactly once.
func TestDuplicateEventHasOneEffect(t *testing.T) {
	db := mustDB(t)
	o := placeOrder(t, newKey(), orderJSON("c-dup-"+uuid.NewString(), "r-dup", 800))
	wantExactlyOnce(t, db, o.ID, 30*time.Second)

	var eventID string
	var payload []byte
	if err := db.QueryRow(context.Background(), "SELECT event_id::text, payload FROM outbox WHERE order_id = $1 AND routing_key = $2",
		o.ID, events.OrderPlaced).Scan(&eventID, &payload); err != nil {
		t.Fatal(err)
	}
	consumers := map[string]string{"payment": broker.QueuePayment, "restaurant": broker.QueueRestaurant,
		"email": broker.QueueEmail, "analytics": broker.QueueAnalytics}
	for name := range consumers {
		dabba.Proc(name).Kill()
	}
	pub := broker.NewPublisher(testenv.MustBroker(t), zaptest.NewLogger(t))
	defer pub.Close()
	for range 2 {
		testenv.Publish(t, pub, broker.ExchangeOrders, events.OrderPlaced, eventID, o.ID, payload)
	}
	// The management API's figures lag by up to 5 s: see the copies
	// waiting first, so that a later zero means they were consumed.
	for _, q := range consumers {
		eventually(t, 20*time.Second, "duplicates waiting in "+q, func() error {
			if n := queue(t, q).Messages; n < 2 {
				return fmt.Errorf("%d messages", n)
			}
			return nil
		})
	}
	for name := range consumers {
		revive(t, dabba.Proc(name))
	}
	for _, q := range consumers {
		eventually(t, 30*time.Second, "duplicates consumed from "+q, func() error {
			if n := queue(t, q).Messages; n != 0 {
				return fmt.Errorf("%d messages", n)
			}
			return nil
		})
	}
	wantLedger(t, db, []string{o.ID}, 10*time.Second, allExactlyOnce, nil)
}
