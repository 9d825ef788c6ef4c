package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/token"
)

// The fault suite: each case places orders under load while it breaks
// something, then holds the system to its ledger (load_test.go). They skip
// unless DABBA_FAULTS=1: they stop the machine's shared broker and database.

func allExactlyOnce(string) []effects { return []effects{exactlyOnce} }

// revive starts a killed service again and waits until it is ready.
func revive(t testing.TB, p *stack.Proc) {
	t.Helper()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFaultServicesKilledUnderLoad SIGKILLs every service that does an
// order's work, in turn and twice each, while orders keep arriving: the
// four consumers in the middle of their work, and the orders service
// (API, outbox relay and order-status projection) with requests and
// publishes in flight. Clients retry with their Idempotency-Key, and do
// all customers do (a mixed load): cancel orders before and after their
// charge, have cards declined, order only free dishes, try to pick their
// rider. Every order's money and messages must come out right all the same.
func TestFaultServicesKilledUnderLoad(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	// Slow enough charges that payment always dies with some in flight.
	gatewayConfig(t, fmt.Sprintf(`{"latency_ms": 300, "decline_amount_cents": %d}`, declinePrice))
	defer gatewayConfig(t, `{"latency_ms": 5, "decline_amount_cents": 0}`)
	load := startMixedLoad(t, "kill", 40)
	for round := 0; round < 2; round++ {
		for _, name := range []string{"payment", "restaurant", "email", "analytics", "orders"} {
			time.Sleep(1500 * time.Millisecond) // let work pile up in the victim
			p := dabba.Proc(name)
			p.Kill()
			revive(t, p)
		}
	}
	time.Sleep(time.Second)
	ids := load.Stop()
	wantLedger(t, db, ids, 2*time.Minute, load.want, nil)
	load.wantNoOrders(db)
	got, err := readEffects(db, ids)
	if err != nil {
		t.Fatal(err)
	}
	var cancelled, charged int
	for _, id := range ids {
		if load.cases[id] == caseCancelBeforeCharge {
			cancelled++
			charged += got[id].Charges
		}
	}
	t.Logf("of %d orders cancelled at once, %d were charged (payment was quicker) and refunded, %d never charged", cancelled, charged, cancelled-charged)
}

// TestFaultRelayKilledWithUnpublishedRows SIGKILLs the service whose
// outbox relay publishes (orders or payment: the one holding the relay's
// lock) while the outbox holds orders it could not publish yet, the broker
// being down; the other relay takes over and publishes them.
func TestFaultRelayKilledWithUnpublishedRows(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	var ids []string
	var leader string
	restartBroker(t, "app", func() {
		for i := 0; i < 20; i++ {
			ids = append(ids, placeOrder(t, newKey(), orderJSON("c-relay-"+uuid.NewString(), "r-relay", 700)).ID)
		}
		var unsent int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM outbox o WHERE order_id = ANY($1)
			AND (o.tx, o.id) > (SELECT tx, id FROM outbox_readers WHERE name = 'relay')`, ids).Scan(&unsent); err != nil {
			t.Fatal(err)
		}
		if unsent != len(ids) {
			t.Fatalf("%d unpublished outbox rows, want %d", unsent, len(ids))
		}
		err := db.QueryRow(context.Background(), `SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = `+outbox.RelayLockKey).Scan(&leader)
		if err != nil {
			t.Fatalf("which relay publishes: %v", err)
		}
		dabba.Proc(leader).Kill()
	})
	revive(t, dabba.Proc(leader))
	wantLedger(t, db, ids, 2*time.Minute, allExactlyOnce, nil)
}

// TestFaultBrokerRestartUnderLoad stops RabbitMQ while orders keep
// arriving, the application only and then the whole node: the API keeps
// answering 201 from the outbox, and every service reconnects by itself.
func TestFaultBrokerRestartUnderLoad(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	for _, how := range []string{"app", "node"} {
		t.Run(how, func(t *testing.T) {
			before := pids()
			load := startOrderLoad(t, "broker-"+how, 20)
			time.Sleep(2 * time.Second)
			down := time.Now()
			restartBroker(t, how, func() { time.Sleep(5 * time.Second) })
			back := time.Now()
			wantAllReady(t, before, time.Minute)
			t.Logf("broker away for %v; every service ready again %v after it was back",
				back.Sub(down).Round(100*time.Millisecond), time.Since(back).Round(100*time.Millisecond))
			time.Sleep(3 * time.Second)
			ids := load.Stop()
			if len(load.retries) > 0 {
				t.Errorf("the API refused orders while the broker was away: %v", load.retries)
			}
			wantLedger(t, db, ids, 2*time.Minute, allExactlyOnce, nil)
		})
	}
}

// TestFaultPostgresRestartUnderLoad stops PostgreSQL under load: requests
// during the outage get a prompt 503 with Retry-After (never a hang, never
// a 201 for an order not stored), consumers retry rather than ack work not
// done, and everything recovers without a restart.
func TestFaultPostgresRestartUnderLoad(t *testing.T) {
	needFaults(t)
	before := pids()
	load := startOrderLoad(t, "postgres", 20)
	time.Sleep(2 * time.Second)
	probe := "c-pg-probe-" + uuid.NewString()
	restartPostgres(t, func() {
		time.Sleep(500 * time.Millisecond)
		for i := 0; i < 5; i++ {
			start := time.Now()
			headers := bearer(as(t, token.AudienceCustomer, probe))
			headers["Idempotency-Key"] = newKey()
			code, h, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", headers, orderJSON(probe, "r-pg", 500))
			if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
				t.Errorf("POST while the database is down = %d (Retry-After %q): %s", code, h.Get("Retry-After"), b)
			}
			t.Logf("POST while the database is down: %d in %v", code, time.Since(start).Round(time.Millisecond))
			if code, _, _ := do(t, http.MethodGet, base(ports.Orders)+"/readyz", nil, ""); code != http.StatusServiceUnavailable {
				t.Errorf("orders /readyz while the database is down = %d, want 503", code)
			}
			time.Sleep(time.Second)
		}
	})
	time.Sleep(3 * time.Second)
	ids := load.Stop()
	wantAllReady(t, before, time.Minute)
	db := mustDB(t)
	wantLedger(t, db, ids, 2*time.Minute, allExactlyOnce, nil)
	var stored int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE customer_id = $1", probe).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 0 {
		t.Errorf("%d orders stored for requests answered 503", stored)
	}
}

// deadIn waits until every order has a message in queue's DLQ with the
// given reason and returns order id → queue for wantLedger.
func deadIn(t testing.TB, queue, reason string, ids []string, within time.Duration) map[string]string {
	t.Helper()
	dead := map[string]string{}
	eventually(t, within, fmt.Sprintf("%d orders' messages in %s", len(ids), broker.DLQ(queue)), func() error {
		found := map[string]bool{}
		for _, m := range peek(t, broker.DLQ(queue)) {
			if m.Properties.Headers[broker.HeaderReason] == reason {
				found[m.Properties.CorrelationID] = true
			}
		}
		for _, id := range ids {
			if !found[id] {
				return fmt.Errorf("order %s not dead-lettered (%s)", id, reason)
			}
		}
		return nil
	})
	for _, id := range ids {
		dead[id] = queue
	}
	return dead
}

// TestFaultSlowFailingGateway puts the payment gateway at 2 s a call and
// half of them failing (503): a provider that fails is an outage to
// payment, which holds the order.placed it has, takes no new work and asks
// again (the same idempotency key each time, so nothing is charged twice)
// until the provider answers; every order is paid, none dead-lettered,
// and the API stays fast throughout.
func TestFaultSlowFailingGateway(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	gatewayConfig(t, `{"latency_ms": 2000, "fail_rate": 0.5}`)
	defer gatewayConfig(t, `{"latency_ms": 5, "fail_rate": 0}`)
	load := startOrderLoad(t, "gateway", 10)
	time.Sleep(4 * time.Second)
	ids := load.Stop()
	wantLedger(t, db, ids, 3*time.Minute, allExactlyOnce, nil)
}

// TestFaultSMTPRefusing has the mail server refuse mail for good (550):
// each mail is dead-lettered at once, and the rest of each order's work
// goes on. (A temporary refusal, 451, is an outage: TestFaultOutages.)
func TestFaultSMTPRefusing(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	smtpRefuse(t, 550)
	defer smtpRefuse(t, 0)
	load := startOrderLoad(t, "smtp-550", 10)
	time.Sleep(3 * time.Second)
	ids := load.Stop()
	dead := deadIn(t, "email", "permanent-error", ids, 2*time.Minute)
	wantLedger(t, db, ids, time.Minute, func(string) []effects {
		e := exactlyOnce
		e.Emails = 0
		return []effects{e}
	}, dead)
}

func smtpRefuse(t testing.TB, code int) {
	t.Helper()
	if got, _, b := do(t, http.MethodPut, base(ports.SMTPHTTP)+"/admin/refuse",
		map[string]string{"Content-Type": "application/json"}, fmt.Sprintf(`{"code": %d}`, code)); got != http.StatusNoContent {
		t.Fatalf("refuse mail = %d %s", got, b)
	}
}
