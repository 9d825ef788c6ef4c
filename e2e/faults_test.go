package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
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

// TestBrokerDownOrdersKeepComing stops RabbitMQ, places orders (the API
// keeps answering 201: the outbox holds the events), starts it again, and
// checks that every order then flows through every consumer exactly once,
// with no service restarted.
func TestBrokerDownOrdersKeepComing(t *testing.T) {
	db := mustDB(t)
	rabbitmqctl(t, "stop_app")
	started := false
	defer func() {
		if !started {
			rabbitmqctl(t, "start_app")
		}
	}()
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, placeOrder(t, newKey(), orderJSON("c-down-"+uuid.NewString(), "r-down", 900)).ID)
	}
	var unsent int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM outbox WHERE order_id = ANY($1) AND sent_at IS NULL", ids).Scan(&unsent); err != nil {
		t.Fatal(err)
	}
	if unsent != len(ids) {
		t.Fatalf("%d unsent outbox rows while the broker is down, want %d", unsent, len(ids))
	}
	rabbitmqctl(t, "start_app")
	started = true
	waitPaid(t, 90*time.Second, ids...)
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
