package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/token"
)

// needFaults skips a test that breaks something the whole machine shares
// (the broker, the database) unless DABBA_FAULTS=1, as make test-faults
// sets.
func needFaults(t *testing.T) {
	t.Helper()
	if os.Getenv("DABBA_FAULTS") == "" {
		t.Skip("breaks the shared broker or database: run with DABBA_FAULTS=1 (make test-faults)")
	}
}

// orderLoad places orders at a steady rate until stopped, the way a client
// app should: each order has its own Idempotency-Key and is sent again with
// the same key after a network error, a 409 (the first attempt still in
// flight) or a 503 (after its Retry-After), until it is accepted. So every
// order the client meant to place must end up accepted exactly once, and
// the ledger can hold the system to that.
type orderLoad struct {
	t    testing.TB
	tag  string
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	byKey    map[string]string // Idempotency-Key → the order id it was answered with
	retries  map[string]int    // why placements were sent again
	failures []string          // answers no retry can mend
	latency  []time.Duration   // of every answered POST
	slowest  time.Duration
}

// startOrderLoad starts placing perSecond orders a second, open loop: each
// order starts on the clock, whether or not earlier ones have finished.
func startOrderLoad(t testing.TB, tag string, perSecond int) *orderLoad {
	mustMenu(t, orderJSON("c-"+tag, "r-"+tag, loadPrice))
	l := &orderLoad{t: t, tag: tag, stop: make(chan struct{}), byKey: map[string]string{}, retries: map[string]int{}}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				l.wg.Add(1)
				go func() {
					defer l.wg.Done()
					l.place(uuid.NewString())
				}()
			}
		}
	}()
	return l
}

// loadPrice is what each order of a load costs.
const loadPrice = 1500

// client has a timeout well above any answer the API should take, so a
// hang shows up as a failure rather than a stuck test.
var client = &http.Client{Timeout: 10 * time.Second}

func (l *orderLoad) place(key string) {
	customer := "c-" + l.tag + "-" + key[:8]
	body := orderJSON(customer, "r-"+l.tag, loadPrice)
	// Not as(): this runs in a goroutine of its own, where t.Fatal may not.
	tok, err := token.NewSigner([]byte(e2eSecret)).Mint(token.AudienceCustomer, customer, time.Hour)
	if err != nil {
		l.fail(err.Error())
		return
	}
	deadline := time.Now().Add(3 * time.Minute)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		req, _ := http.NewRequest(http.MethodPost, base(ports.Orders)+"/v1/orders", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Authorization", "Bearer "+tok)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			l.retry("network error", 200*time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		l.answered(time.Since(start))
		switch resp.StatusCode {
		case http.StatusCreated:
			var o order
			if err := json.Unmarshal(b, &o); err != nil || o.ID == "" {
				l.fail(fmt.Sprintf("201 without an order: %s", b))
				return
			}
			l.accept(key, o.ID)
			return
		case http.StatusConflict:
			l.retry("409 in flight", 200*time.Millisecond)
		case http.StatusServiceUnavailable:
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || secs <= 0 {
				l.fail(fmt.Sprintf("503 without a Retry-After: %q", resp.Header.Get("Retry-After")))
				return
			}
			l.retry("503 Retry-After", time.Duration(secs)*time.Second)
		default:
			l.fail(fmt.Sprintf("POST /v1/orders = %d: %s", resp.StatusCode, b))
			return
		}
	}
	l.fail("order " + key + " not accepted within 3 minutes")
}

func (l *orderLoad) retry(why string, wait time.Duration) {
	l.mu.Lock()
	l.retries[why]++
	l.mu.Unlock()
	time.Sleep(wait)
}

func (l *orderLoad) answered(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.latency = append(l.latency, d)
	l.slowest = max(l.slowest, d)
}

func (l *orderLoad) accept(key, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.byKey[key]; ok && prev != id {
		l.failures = append(l.failures, fmt.Sprintf("key %s answered with orders %s and %s", key, prev, id))
	}
	l.byKey[key] = id
}

func (l *orderLoad) fail(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = append(l.failures, msg)
}

// Stop stops placing new orders, waits for those under way to be accepted
// and returns the accepted orders' ids. Any answer no retry could mend
// fails the test.
func (l *orderLoad) Stop() []string {
	l.t.Helper()
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.failures {
		l.t.Error(f)
	}
	ids := make([]string, 0, len(l.byKey))
	seen := map[string]bool{}
	for _, id := range l.byKey {
		if seen[id] {
			l.t.Errorf("two Idempotency-Keys answered with the same order %s", id)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	slices.Sort(l.latency)
	p := func(q float64) time.Duration {
		if len(l.latency) == 0 {
			return 0
		}
		return l.latency[int(q*float64(len(l.latency)-1))].Round(time.Millisecond)
	}
	l.t.Logf("load %s: %d orders accepted; POST p50 %v p99 %v max %v; retries %v",
		l.tag, len(ids), p(0.50), p(0.99), l.slowest.Round(time.Millisecond), l.retries)
	if len(ids) == 0 {
		l.t.Fatal("the load placed no order")
	}
	return ids
}

// effects counts, for one order, what each consumer did about it.
type effects struct {
	Orders, Paid, Charges, Payments, PaidEvents, Notifications, Emails, AnalyticsRows int
}

// exactlyOnce is the ledger of an order that went all the way.
var exactlyOnce = effects{1, 1, 1, 1, 1, 1, 1, 1}

// readEffects reads the ledger of many orders at once: the database's
// counts and the fake gateway's charges. Its errors are worth retrying
// (the database may be coming back).
func readEffects(db *pgxpool.Pool, ids []string) (map[string]effects, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := map[string]effects{}
	for _, id := range ids {
		got[id] = effects{}
	}
	// One grouped query per effect: each table is read once for all the
	// orders, whatever its indexes (the outbox has none on order_id).
	for _, c := range []struct {
		query string
		field func(*effects) *int
	}{
		{"SELECT id::text, count(*) FROM orders WHERE id = ANY($1) GROUP BY id", func(e *effects) *int { return &e.Orders }},
		{"SELECT id::text, count(*) FROM orders WHERE id = ANY($1) AND status = 'paid' GROUP BY id", func(e *effects) *int { return &e.Paid }},
		{"SELECT order_id::text, count(*) FROM payments WHERE order_id = ANY($1) GROUP BY order_id", func(e *effects) *int { return &e.Payments }},
		{"SELECT order_id::text, count(*) FROM outbox WHERE order_id = ANY($1) AND routing_key = 'order.paid' GROUP BY order_id", func(e *effects) *int { return &e.PaidEvents }},
		{"SELECT order_id::text, count(*) FROM restaurant_notifications WHERE order_id = ANY($1) AND event_type = 'order.placed' GROUP BY order_id", func(e *effects) *int { return &e.Notifications }},
		{"SELECT order_id::text, count(*) FROM emails_sent WHERE order_id = ANY($1) AND kind = 'order.placed' GROUP BY order_id", func(e *effects) *int { return &e.Emails }},
		{"SELECT order_id::text, count(*) FROM analytics_events WHERE order_id = ANY($1) AND event_type = 'order.placed' GROUP BY order_id", func(e *effects) *int { return &e.AnalyticsRows }},
	} {
		rows, err := db.Query(ctx, c.query, ids)
		if err != nil {
			return nil, fmt.Errorf("ledger: %w", err)
		}
		for rows.Next() {
			var id string
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ledger: %w", err)
			}
			e := got[id]
			*c.field(&e) = n
			got[id] = e
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("ledger: %w", err)
		}
	}
	resp, err := client.Get(base(ports.Gateway) + "/v1/charges")
	if err != nil {
		return nil, fmt.Errorf("gateway charges: %w", err)
	}
	defer resp.Body.Close()
	var charges []struct {
		OrderID string `json:"order_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&charges); err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gateway charges: %d %v", resp.StatusCode, err)
	}
	for _, c := range charges {
		if e, ok := got[c.OrderID]; ok {
			e.Charges++
			got[c.OrderID] = e
		}
	}
	return got, nil
}

// wantLedger waits until every order's ledger reads want (or the ledger
// want returns for it), then checks that nothing more trickles in and that
// no message of these orders sits in a work queue or a dead-letter queue
// other than the ones named in dead.
func wantLedger(t testing.TB, db *pgxpool.Pool, ids []string, within time.Duration, want func(id string) effects, dead map[string]string) {
	t.Helper()
	check := func() error {
		got, err := readEffects(db, ids)
		if err != nil {
			return err
		}
		wrong := 0
		var example string
		for _, id := range ids {
			if w := want(id); got[id] != w {
				if wrong == 0 {
					example = fmt.Sprintf("order %s: %+v, want %+v", id, got[id], w)
				}
				wrong++
			}
		}
		if wrong > 0 {
			return fmt.Errorf("%d of %d orders not as wanted, e.g. %s", wrong, len(ids), example)
		}
		return nil
	}
	eventually(t, within, "ledger of "+strconv.Itoa(len(ids))+" orders", check)
	time.Sleep(time.Second) // a late duplicate would show now
	if err := check(); err != nil {
		t.Fatal(err)
	}
	wantNothingLeft(t, ids, dead)
}

// wantNothingLeft checks that no message about these orders is left
// behind: it waits until every work and retry queue is empty (consumers
// outside the ledger, tracking, may still be catching up), then looks
// through the dead-letter queues, where only the messages of dead (order
// id → the work queue whose DLQ holds it) may be. Work queues are not
// peeked: a look returns messages to a quorum queue, which counts against
// its delivery limit.
func wantNothingLeft(t testing.TB, ids []string, dead map[string]string) {
	t.Helper()
	type queueDepth struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}
	var dlqs []string
	eventually(t, 30*time.Second, "every work and retry queue empty", func() error {
		var queues []queueDepth
		management(t, http.MethodGet, "/queues/%2F?columns=name,messages", nil, &queues)
		dlqs = dlqs[:0]
		for _, q := range queues {
			switch {
			case strings.HasSuffix(q.Name, ".dlq"):
				dlqs = append(dlqs, q.Name)
			case strings.HasPrefix(q.Name, "amq.") || strings.HasPrefix(q.Name, "tracking.live") || q.Name == "orders.unroutable":
			case q.Messages > 0:
				return fmt.Errorf("%d messages in %s", q.Messages, q.Name)
			}
		}
		return nil
	})
	ours := map[string]bool{}
	for _, id := range ids {
		ours[id] = true
	}
	for _, q := range dlqs {
		for _, m := range peek(t, q) {
			id := m.Properties.CorrelationID
			if origin, ok := dead[id]; ours[id] && !(ok && q == origin+".dlq") {
				t.Errorf("message %s (%s) of order %s dead-lettered in %s", m.Properties.MessageID, m.RoutingKey, id, q)
			}
		}
	}
}

// restartBroker stops RabbitMQ and starts it again: "app" stops only the
// RabbitMQ application (the Erlang node stays up), "node" stops the whole
// node and starts a new one, as a machine reboot would. During the outage
// it calls during. The broker is started again even if the test fails.
func restartBroker(t testing.TB, how string, during func()) {
	t.Helper()
	switch how {
	case "app":
		rabbitmqctl(t, "stop_app")
		defer rabbitmqctl(t, "start_app")
	case "node":
		rabbitmqctl(t, "stop")
		defer func() {
			// The daemon must not inherit the test's output pipes (go test
			// would wait for it to close them) nor its process group.
			start := exec.Command("rabbitmq-server", "-detached")
			start.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := start.Run(); err != nil {
				t.Fatalf("rabbitmq-server -detached: %v", err)
			}
			eventually(t, time.Minute, "RabbitMQ started", func() error {
				return exec.Command("rabbitmqctl", "await_startup").Run()
			})
		}()
	default:
		t.Fatalf("restartBroker: how = %q", how)
	}
	during()
}

// restartPostgres stops PostgreSQL (fast: open sessions are cut, as in a
// crash or failover) and starts it again after during, even if the test
// fails.
func restartPostgres(t testing.TB, during func()) {
	t.Helper()
	versions, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(versions) != 1 {
		t.Fatalf("find the PostgreSQL cluster: %v (%d versions)", err, len(versions))
	}
	v := versions[0].Name()
	run(t, "pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "stop", "-m", "fast")
	defer run(t, "pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start")
	during()
}

// wantAllReady checks that every service answers /readyz with 200 again
// and that none was restarted since pids were taken.
func wantAllReady(t testing.TB, pids map[string]int, within time.Duration) {
	t.Helper()
	for _, p := range dabba.Procs {
		eventually(t, within, p.Name+" ready again", func() error {
			resp, err := client.Get("http://" + p.Addr + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("/readyz = %d", resp.StatusCode)
			}
			return nil
		})
		if pids != nil && p.Pid() != pids[p.Name] {
			t.Errorf("%s was restarted (pid %d, was %d): it should have recovered by itself", p.Name, p.Pid(), pids[p.Name])
		}
	}
}

// pids notes every service's process id.
func pids() map[string]int {
	m := map[string]int{}
	for _, p := range dabba.Procs {
		m[p.Name] = p.Pid()
	}
	return m
}
