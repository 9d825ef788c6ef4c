package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// flight), a 503 or a 429 (after its Retry-After), until it is accepted. So every
// order the client meant to place must end up accepted exactly once, and
// the ledger can hold the system to that.
//
// A mixed load (startMixedLoad) also does what customers do to their
// orders besides placing them, in turn: cancels one once it is paid,
// cancels one at once, orders at the price the provider declines, orders
// only free dishes (the API refuses a zero total) and tries to assign its
// order a rider of its choice (refused); every step retried as a good
// client would.
type orderLoad struct {
	t     testing.TB
	tag   string
	mixed bool
	stop  chan struct{}
	wg    sync.WaitGroup
	n     atomic.Int64 // orders started
	// patience is how long a request is sent again before the test gives
	// up on it: longer than any outage the suite makes.
	patience time.Duration

	mu       sync.Mutex
	byKey    map[string]string    // Idempotency-Key → the order id it was answered with
	cases    map[string]orderCase // order id → what the load did with it
	refused  []string             // customers whose zero-total order was refused
	retries  map[string]int       // why requests were sent again
	failures []string             // answers no retry can mend
	latency  []time.Duration      // of every answered POST /v1/orders
	slowest  time.Duration
}

// orderCase is what a load does with one order.
type orderCase int

const (
	caseNormal             orderCase = iota // placed, paid
	caseCancelAfterCharge                   // cancelled once paid: charged and refunded
	caseCancelBeforeCharge                  // cancelled at once: never charged, or charged and refunded if payment was quicker
	caseDeclined                            // at the price the provider declines
	caseZeroTotal                           // free dishes only: refused
	caseStolenRider                         // its customer tries to assign a rider: refused
)

// mixedCases are the cases a mixed load goes through, in turn.
var mixedCases = []orderCase{caseNormal, caseCancelAfterCharge, caseCancelBeforeCharge, caseDeclined, caseZeroTotal, caseStolenRider}

// Prices of a load's orders: loadPrice for most, declinePrice for the
// orders the provider declines (the mixed load's test sets it so).
const (
	loadPrice    = 1500
	declinePrice = 1313
)

// startOrderLoad starts placing perSecond orders a second, open loop: each
// order starts on the clock, whether or not earlier ones have finished.
func startOrderLoad(t testing.TB, tag string, perSecond int) *orderLoad {
	return startLoad(t, tag, perSecond, false)
}

// startMixedLoad is startOrderLoad with every case of mixedCases; the
// provider must decline declinePrice.
func startMixedLoad(t testing.TB, tag string, perSecond int) *orderLoad {
	return startLoad(t, tag, perSecond, true)
}

func startLoad(t testing.TB, tag string, perSecond int, mixed bool) *orderLoad {
	for _, price := range []int64{loadPrice, declinePrice, 0} {
		mustMenu(t, orderJSON("c-"+tag, "r-"+tag, price))
	}
	l := &orderLoad{t: t, tag: tag, mixed: mixed, stop: make(chan struct{}), byKey: map[string]string{}, cases: map[string]orderCase{},
		retries: map[string]int{}, patience: 2*time.Minute + outageLength(t)}
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

// client has a timeout well above any answer the API should take, so a
// hang shows up as a failure rather than a stuck test.
var client = &http.Client{Timeout: 10 * time.Second}

// place places one order and does what its case says with it.
func (l *orderLoad) place(key string) {
	c := caseNormal
	if l.mixed {
		c = mixedCases[int(l.n.Add(1)-1)%len(mixedCases)]
	}
	customer := "c-" + l.tag + "-" + key[:8]
	price := int64(loadPrice)
	switch c {
	case caseDeclined:
		price = declinePrice
	case caseZeroTotal:
		price = 0
	}
	// Not as(): this runs in a goroutine of its own, where t.Fatal may not.
	tok, err := token.NewSigner([]byte(e2eSecret)).Mint(token.AudienceCustomer, customer, time.Hour)
	if err != nil {
		l.fail(err.Error())
		return
	}
	code, b, ok := l.call(http.MethodPost, "/v1/orders", tok, key, orderJSON(customer, "r-"+l.tag, price), true)
	switch {
	case !ok:
		return
	case c == caseZeroTotal && code == http.StatusUnprocessableEntity:
		l.mu.Lock()
		l.refused = append(l.refused, customer)
		l.mu.Unlock()
		return
	case code != http.StatusCreated || c == caseZeroTotal:
		l.fail(fmt.Sprintf("POST /v1/orders (%d) = %d: %s", c, code, b))
		return
	}
	var o order
	if err := json.Unmarshal(b, &o); err != nil || o.ID == "" {
		l.fail(fmt.Sprintf("201 without an order: %s", b))
		return
	}
	l.accept(key, o.ID, c)
	switch c {
	case caseCancelAfterCharge:
		if l.waitStatus(tok, o.ID, "paid") {
			l.cancel(tok, o.ID)
		}
	case caseCancelBeforeCharge:
		l.cancel(tok, o.ID)
	case caseStolenRider:
		// A customer who could choose its rider could follow anyone.
		if code, b, ok := l.call(http.MethodPost, "/v1/orders/"+o.ID+"/rider", tok, "", `{"rider_id":"stolen-`+key[:8]+`"}`, false); ok && code != http.StatusForbidden {
			l.fail(fmt.Sprintf("a customer assigned a rider: %d %s", code, b))
		}
	}
}

// cancel cancels an order as its customer. A 409 after an attempt whose
// answer was lost (a killed service) is fine if the order is cancelled.
func (l *orderLoad) cancel(tok, id string) {
	code, b, ok := l.call(http.MethodPost, "/v1/orders/"+id+"/status", tok, "", `{"status":"cancelled"}`, false)
	switch {
	case !ok || code == http.StatusOK:
	case code == http.StatusConflict && l.waitStatus(tok, id, "cancelled"):
	default:
		l.fail(fmt.Sprintf("cancel %s = %d %s", id, code, b))
	}
}

// waitStatus waits up to two minutes for an order to reach status.
func (l *orderLoad) waitStatus(tok, id, status string) bool {
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		code, b, ok := l.call(http.MethodGet, "/v1/orders/"+id, tok, "", "", false)
		if !ok {
			return false
		}
		var o order
		if code == http.StatusOK && json.Unmarshal(b, &o) == nil && o.Status == status {
			return true
		}
	}
	l.fail(fmt.Sprintf("order %s not %s within 2 minutes", id, status))
	return false
}

// call sends a request with the customer's token until it gets an answer
// no retry changes: again after a network error, a 503 or a 429 (after its
// Retry-After), and after a 409 when inFlight409 (the Idempotency-Key's
// first request still in flight). ok is false, and the test failed, if
// none came within its patience.
func (l *orderLoad) call(method, path, tok, key, body string, inFlight409 bool) (code int, answer []byte, ok bool) {
	for deadline := time.Now().Add(l.patience); time.Now().Before(deadline); {
		req, _ := http.NewRequest(method, base(ports.Orders)+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			l.retry("network error", 200*time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/v1/orders" {
			l.answered(time.Since(start))
		}
		switch {
		case resp.StatusCode == http.StatusConflict && inFlight409:
			l.retry("409 in flight", 200*time.Millisecond)
		case resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusTooManyRequests:
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || secs <= 0 {
				l.fail(fmt.Sprintf("%s %s: %d without a Retry-After: %q", method, path, resp.StatusCode, resp.Header.Get("Retry-After")))
				return 0, nil, false
			}
			// A little more than asked, and not all at once: after an
			// outage, every waiting client coming back in the same
			// instant is a flood of its own.
			l.retry(fmt.Sprintf("%d Retry-After", resp.StatusCode), time.Duration(secs)*time.Second+rand.N(time.Second))
		default:
			return resp.StatusCode, b, true
		}
	}
	l.fail(fmt.Sprintf("%s %s: no answer within %v", method, path, l.patience))
	return 0, nil, false
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

func (l *orderLoad) accept(key, id string, c orderCase) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.byKey[key]; ok && prev != id {
		l.failures = append(l.failures, fmt.Sprintf("key %s answered with orders %s and %s", key, prev, id))
	}
	l.byKey[key], l.cases[id] = id, c
}

func (l *orderLoad) fail(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = append(l.failures, msg)
}

// Stop stops placing new orders, waits for those under way to be accepted
// (and for what their cases do after) and returns the accepted orders'
// ids. Any answer no retry could mend fails the test.
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
	l.t.Logf("load %s: %d orders accepted, %d zero-total orders refused; POST p50 %v p99 %v max %v; retries %v",
		l.tag, len(ids), len(l.refused), p(0.50), p(0.99), l.slowest.Round(time.Millisecond), l.retries)
	if len(ids) == 0 {
		l.t.Fatal("the load placed no order")
	}
	return ids
}

// want is the ledger each of the load's orders must end with, by its case.
func (l *orderLoad) want(id string) []effects {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch l.cases[id] {
	case caseCancelAfterCharge:
		return []effects{cancelledAfterCharge}
	case caseCancelBeforeCharge:
		// Payment may have charged before it saw the cancellation: then
		// the charge is refunded.
		return []effects{cancelledBeforeCharge, cancelledAfterCharge}
	case caseDeclined:
		return []effects{declined}
	}
	return []effects{exactlyOnce}
}

// wantNoOrders checks that the refused zero-total orders were not stored.
func (l *orderLoad) wantNoOrders(db *pgxpool.Pool) {
	l.t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE customer_id = ANY($1)", l.refused).Scan(&n); err != nil {
		l.t.Fatal(err)
	}
	if n != 0 {
		l.t.Errorf("%d zero-total orders stored though refused", n)
	}
}

// effects counts, for one order, what each service did about it: the
// provider's succeeded charges and refunds, payment's rows and events, the
// restaurant's, e-mail's and analytics' records, and the order's status.
type effects struct {
	Orders                       int
	Status                       string
	Charges, Refunds             int // at the provider, succeeded
	Payments                     int
	PaidEvents                   int
	FailedEvents                 int
	RefundEvents                 int
	Notifications, Emails        int // of order.placed
	AnalyticsRows                int // of order.placed
	CancelMails                  int
	FailedMails                  int
	RefundMails                  int
	RefundNotes, RefundAnalytics int // order.refunded in the restaurant's feed and in analytics
	Riders                       int // order.rider_assigned events
}

// The ledgers of an order's possible lives.
var (
	// exactlyOnce is the ledger of an order that went all the way.
	exactlyOnce = effects{Orders: 1, Status: "paid", Charges: 1, Payments: 1, PaidEvents: 1, Notifications: 1, Emails: 1, AnalyticsRows: 1}
	// cancelledAfterCharge was charged, cancelled and refunded.
	cancelledAfterCharge = effects{Orders: 1, Status: "cancelled", Charges: 1, Refunds: 1, Payments: 1, PaidEvents: 1, RefundEvents: 1,
		Notifications: 1, Emails: 1, AnalyticsRows: 1, CancelMails: 1, RefundMails: 1, RefundNotes: 1, RefundAnalytics: 1}
	// cancelledBeforeCharge was cancelled before payment charged it:
	// never charged, its charge voided (the payments row says so).
	cancelledBeforeCharge = effects{Orders: 1, Status: "cancelled", Payments: 1, Notifications: 1, Emails: 1, AnalyticsRows: 1, CancelMails: 1}
	// declined: the provider declined the card.
	declined = effects{Orders: 1, Status: "payment_failed", Payments: 1, FailedEvents: 1, Notifications: 1, Emails: 1, AnalyticsRows: 1, FailedMails: 1}
)

// readEffects reads the ledger of many orders at once: the database's
// counts and the fake gateway's charges and refunds. Its errors are worth
// retrying (the database may be coming back).
func readEffects(db *pgxpool.Pool, ids []string) (map[string]effects, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := map[string]effects{}
	for _, id := range ids {
		got[id] = effects{}
	}
	count := func(table, column, where string, field func(*effects) *int) struct {
		query string
		field func(*effects) *int
	} {
		return struct {
			query string
			field func(*effects) *int
		}{fmt.Sprintf("SELECT %[2]s::text, count(*) FROM %[1]s WHERE %[2]s = ANY($1) %[3]s GROUP BY %[2]s", table, column, where), field}
	}
	// One grouped query per effect: each table is read once for all the
	// orders, whatever its indexes (the outbox has none on order_id).
	for _, c := range []struct {
		query string
		field func(*effects) *int
	}{
		count("orders", "id", "", func(e *effects) *int { return &e.Orders }),
		count("payments", "order_id", "", func(e *effects) *int { return &e.Payments }),
		count("outbox", "order_id", "AND routing_key = 'order.paid'", func(e *effects) *int { return &e.PaidEvents }),
		count("outbox", "order_id", "AND routing_key = 'order.payment_failed'", func(e *effects) *int { return &e.FailedEvents }),
		count("outbox", "order_id", "AND routing_key = 'order.refunded'", func(e *effects) *int { return &e.RefundEvents }),
		count("outbox", "order_id", "AND routing_key = 'order.rider_assigned'", func(e *effects) *int { return &e.Riders }),
		count("restaurant_notifications", "order_id", "AND event_type = 'order.placed'", func(e *effects) *int { return &e.Notifications }),
		count("restaurant_notifications", "order_id", "AND event_type = 'order.refunded'", func(e *effects) *int { return &e.RefundNotes }),
		count("emails_sent", "order_id", "AND kind = 'order.placed'", func(e *effects) *int { return &e.Emails }),
		count("emails_sent", "order_id", "AND kind = 'order.cancelled'", func(e *effects) *int { return &e.CancelMails }),
		count("emails_sent", "order_id", "AND kind = 'order.payment_failed'", func(e *effects) *int { return &e.FailedMails }),
		count("emails_sent", "order_id", "AND kind = 'order.refunded'", func(e *effects) *int { return &e.RefundMails }),
		count("analytics_events", "order_id", "AND event_type = 'order.placed'", func(e *effects) *int { return &e.AnalyticsRows }),
		count("analytics_events", "order_id", "AND event_type = 'order.refunded'", func(e *effects) *int { return &e.RefundAnalytics }),
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
	rows, err := db.Query(ctx, "SELECT id::text, status FROM orders WHERE id = ANY($1)", ids)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	for rows.Next() {
		var id, status string
		if err := rows.Scan(&id, &status); err != nil {
			rows.Close()
			return nil, fmt.Errorf("ledger: %w", err)
		}
		e := got[id]
		e.Status = status
		got[id] = e
	}
	rows.Close()
	for _, kind := range []string{"charges", "refunds"} {
		var made []struct {
			OrderID string `json:"order_id"`
			Status  string `json:"status"`
		}
		if err := getJSON(base(ports.Gateway)+"/v1/"+kind, &made); err != nil {
			return nil, fmt.Errorf("gateway %s: %w", kind, err)
		}
		for _, m := range made {
			if e, ok := got[m.OrderID]; ok && m.Status == "succeeded" {
				if kind == "charges" {
					e.Charges++
				} else {
					e.Refunds++
				}
				got[m.OrderID] = e
			}
		}
	}
	return got, nil
}

// getJSON reads url's JSON answer into out.
func getJSON(url string, out any) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s = %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// wantLedger waits until every order's ledger reads one of those want
// returns for it, then checks that nothing more trickles in and that no
// message of these orders sits in a work queue or a dead-letter queue
// other than the ones named in dead.
func wantLedger(t testing.TB, db *pgxpool.Pool, ids []string, within time.Duration, want func(id string) []effects, dead map[string]string) {
	t.Helper()
	check := func() error {
		got, err := readEffects(db, ids)
		if err != nil {
			return err
		}
		wrong := 0
		var example string
		for _, id := range ids {
			if w := want(id); !slices.Contains(w, got[id]) {
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
