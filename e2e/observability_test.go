package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/token"
	"github.com/dabba/dabba/shared/trace"
)

// consumers are the services that consume an order's events, and their queues.
var consumers = map[string]string{
	"payment":    broker.QueuePayment,
	"restaurant": broker.QueueRestaurant,
	"email":      broker.QueueEmail,
	"analytics":  broker.QueueAnalytics,
}

// instrumented are the services that serve /metrics (the fakes do not).
var instrumented = []string{"orders", "payment", "restaurant", "email", "analytics", "tracking"}

// sample is one line of a Prometheus text exposition.
type sample struct {
	name   string
	labels string // as printed, without braces
	value  float64
}

// scrape reads a service's /metrics.
func scrape(t testing.TB, url string) []sample {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	var out []sample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		head, val, ok := strings.Cut(line, " ")
		if i := strings.LastIndexByte(line, '}'); i > 0 {
			head, val, ok = line[:i+1], strings.TrimSpace(line[i+1:]), true
		}
		if !ok {
			t.Fatalf("scrape %s: bad line %q", url, line)
		}
		val, _, _ = strings.Cut(val, " ") // a timestamp may follow
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("scrape %s: bad value in %q", url, line)
		}
		name, labels, _ := strings.Cut(head, "{")
		out = append(out, sample{name: name, labels: strings.TrimSuffix(labels, "}"), value: v})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return out
}

// sum adds the samples called name whose labels contain every one of want
// (each `key="value"`); found says whether there was any.
func sum(samples []sample, name string, want ...string) (total float64, found bool) {
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s.labels, w)
		}
		if ok {
			total, found = total+s.value, true
		}
	}
	return total, found
}

// TestMetricsAfterTraffic places an order, lets all its consumers handle
// it, sends a rider's fix through tracking, and checks that every service's
// /metrics shows it under the documented names. Then it checks that every
// metric the Grafana dashboard queries is one that the services or RabbitMQ
// really expose.
func TestMetricsAfterTraffic(t *testing.T) {
	db := mustDB(t)
	o, r := assignedOrder(t) // paid, and picked up by now
	wantExactlyOnce(t, db, o.ID, 30*time.Second)
	getOrder(t, o.ID) // a route with a parameter
	tracking := base(ports.Tracking)
	s := openTrack(t, tracking, o.ID, o.TrackingToken)
	mustFirstFix(t, s, tracking, r)
	r.post(t, tracking, 1) // older than what was sent: dropped as stale

	scrapes := map[string][]sample{}
	eventually(t, 30*time.Second, "every service's metrics show the traffic", func() error {
		for _, name := range instrumented {
			scrapes[name] = scrape(t, "http://"+dabba.Proc(name).Addr+"/metrics")
		}
		var missing []string
		want := func(svc, name string, positive bool, labels ...string) {
			v, found := sum(scrapes[svc], name, labels...)
			if !found || (positive && v <= 0) {
				missing = append(missing, fmt.Sprintf("%s: %s%v = %v (found %v)", svc, name, labels, v, found))
			}
		}
		for _, svc := range instrumented {
			want(svc, metrics.BrokerConnected, true)
			want(svc, metrics.BrokerReconnects, false)
			want(svc, metrics.HTTPRequestDuration+"_count", true, `route="/readyz"`)
			want(svc, "go_goroutines", true)
		}
		for svc, q := range consumers {
			ql := fmt.Sprintf("queue=%q", q)
			want(svc, metrics.MessagesConsumed, true, ql)
			want(svc, metrics.MessagesAcked, true, ql)
			want(svc, metrics.MessagesRetried, false, ql)
			want(svc, metrics.MessagesRequeued, false, ql)
			want(svc, metrics.MessagesDeadLettered, false, ql, `reason="permanent-error"`)
			want(svc, metrics.MessagesDeadLettered, false, ql, `reason="retries-exhausted"`)
			want(svc, metrics.HandlerDuration+"_count", true, ql)
		}
		want("orders", metrics.HTTPRequestDuration+"_count", true, `route="/v1/orders"`, `method="POST"`, `status="201"`)
		want("orders", metrics.HTTPRequestDuration+"_count", true, `route="/v1/orders/{id}"`, `method="GET"`, `status="200"`)
		want("orders", metrics.OutboxUnsent, false)
		want("orders", metrics.OutboxOldestAge, false)
		want("orders", metrics.PublishConfirmDuration+"_count", true)
		want("orders", metrics.PublishUnconfirmed, false)
		want("tracking", metrics.TrackingSocketsOpen, true)
		want("tracking", metrics.TrackingFixesIn, true)
		want("tracking", metrics.TrackingFixesOut, true)
		want("tracking", metrics.TrackingFixesDropped, true, `reason="stale"`)
		want("tracking", metrics.TrackingFixesDropped, false, `reason="coalesced"`)
		if len(missing) > 0 {
			return fmt.Errorf("missing:\n  %s", strings.Join(missing, "\n  "))
		}
		return nil
	})
	t.Run("RoutePatternsOnly", func(t *testing.T) {
		// A raw path in a label would make a series per order.
		for svc, samples := range scrapes {
			for _, s := range samples {
				if s.name == metrics.HTTPRequestDuration+"_count" && strings.Contains(s.labels, o.ID) {
					t.Errorf("%s labels a request by its raw path: %s{%s}", svc, s.name, s.labels)
				}
			}
		}
	})
	t.Run("DashboardNames", func(t *testing.T) {
		exposed := map[string]bool{}
		for _, samples := range scrapes {
			for _, s := range samples {
				exposed[s.name] = true
			}
		}
		for _, s := range scrape(t, "http://127.0.0.1:15692/metrics/per-object") {
			exposed[s.name] = true
		}
		names := mustDashboard(t).metricNames()
		if len(names) < 10 {
			t.Fatalf("the dashboard queries only %v", names)
		}
		for _, n := range names {
			if !exposed[n] {
				t.Errorf("the dashboard queries %s, which nothing exposes", n)
			}
		}
	})
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr       string `json:"expr"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

// mustDashboard reads the order-flow dashboard, strictly.
func mustDashboard(t testing.TB) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "services", "observability", "grafana", "dashboards", "order-flow.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("order-flow.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("order-flow.json has no uid, title or panels: %+v", d)
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
		}
	}
	return d
}

// metricName matches the series names in Dabba's PromQL: ours and RabbitMQ's.
var metricName = regexp.MustCompile(`\b(?:dabba|rabbitmq)_[a-z0-9_]+\b`)

// metricNames returns every metric the dashboard's queries name.
func (d dashboard) metricNames() []string {
	var names []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			names = append(names, metricName.FindAllString(tg.Expr, -1)...)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// TestTraceparentReachesConsumers places an order with a traceparent and
// finds its trace id in the outbox rows of the order's events (order.placed
// written by orders, order.paid by payment while it handled order.placed)
// and in the log lines of every consumer's handling of them, next to the
// order id, message id and queue. The suite runs with LOG_LEVEL=debug and
// JSON logs, so each handled message leaves a line.
func TestTraceparentReachesConsumers(t *testing.T) {
	db := mustDB(t)
	traceID := strings.ReplaceAll(uuid.NewString(), "-", "")
	in := "00-" + traceID + "-b7ad6b7169203331-01"
	customer := "c-trace-" + uuid.NewString()
	headers := bearer(as(t, token.AudienceCustomer, customer))
	headers["Idempotency-Key"], headers[trace.Header] = newKey(), in
	body := orderJSON(customer, "r-trace", 800)
	mustMenu(t, body)
	code, h, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", headers, body)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/orders = %d %s", code, b)
	}
	if got := h.Get(trace.Header); trace.TraceID(got) != traceID {
		t.Errorf("response traceparent %q, want trace %s", got, traceID)
	}
	var o order
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	waitPaid(t, 30*time.Second, o.ID)
	wantExactlyOnce(t, db, o.ID, 30*time.Second)

	rows, err := db.Query(context.Background(), "SELECT routing_key, coalesce(traceparent, '') FROM outbox WHERE order_id = $1", o.ID)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for rows.Next() {
		var key, tp string
		if err := rows.Scan(&key, &tp); err != nil {
			t.Fatal(err)
		}
		keys[key] = tp
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"order.placed", "order.paid"} {
		if tp, ok := keys[key]; !ok || trace.TraceID(tp) != traceID || tp == in {
			t.Errorf("outbox %s traceparent %q (present %v), want a new span in trace %s", key, tp, ok, traceID)
		}
	}

	logPath := filepath.Join(os.TempDir(), "dabba-e2e.log")
	eventually(t, 20*time.Second, "every consumer logs the trace", func() error {
		seen := map[string]map[string]bool{} // service -> routing keys logged with the trace
		f, err := os.Open(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			i := strings.IndexByte(string(line), '{')
			if i < 0 || !strings.Contains(string(line), traceID) {
				continue
			}
			var rec struct {
				Service    string `json:"service"`
				TraceID    string `json:"trace_id"`
				OrderID    string `json:"order_id"`
				MessageID  string `json:"message_id"`
				Queue      string `json:"queue"`
				RoutingKey string `json:"routing_key"`
			}
			if json.Unmarshal(line[i:], &rec) != nil || rec.TraceID != traceID || rec.Queue == "" {
				continue
			}
			if rec.OrderID != o.ID || rec.MessageID == "" || rec.Queue != consumers[rec.Service] {
				return fmt.Errorf("%s logged trace %s with order_id %q, message_id %q, queue %q", rec.Service, traceID, rec.OrderID, rec.MessageID, rec.Queue)
			}
			if seen[rec.Service] == nil {
				seen[rec.Service] = map[string]bool{}
			}
			seen[rec.Service][rec.RoutingKey] = true
		}
		var missing []string
		for svc := range consumers {
			if len(seen[svc]) == 0 {
				missing = append(missing, svc)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no log line with trace %s from %v (seen %v)", traceID, missing, seen)
		}
		// order.paid came out of payment's outbox row: the trace crossed
		// a consumer into what it published.
		if !seen["restaurant"]["order.paid"] || !seen["email"]["order.paid"] {
			return fmt.Errorf("order.paid not logged with the trace by restaurant and email (seen %v)", seen)
		}
		return nil
	})
}

// TestReadyzFaultBrokerDown stops RabbitMQ and checks that every service's
// /readyz fails while it is down and recovers by itself once it is back,
// with no service restarted; /healthz (alive) answers throughout.
func TestReadyzFaultBrokerDown(t *testing.T) {
	if os.Getenv("DABBA_FAULTS") == "" {
		t.Skip("stops the shared broker: run with DABBA_FAULTS=1 (make test-faults)")
	}
	readyz := func(svc string) (int, string) {
		resp, err := http.Get("http://" + dabba.Proc(svc).Addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var body strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
		return resp.StatusCode, body.String()
	}
	for _, svc := range instrumented {
		if code, body := readyz(svc); code != http.StatusOK {
			t.Fatalf("%s /readyz = %d %s before the fault", svc, code, body)
		}
	}
	rabbitmqctl(t, "stop_app")
	started := false
	defer func() {
		if !started {
			rabbitmqctl(t, "start_app")
		}
	}()
	eventually(t, 30*time.Second, "every /readyz fails while the broker is down", func() error {
		for _, svc := range instrumented {
			if code, body := readyz(svc); code != http.StatusServiceUnavailable || !strings.Contains(body, "broker") {
				return fmt.Errorf("%s /readyz = %d %s", svc, code, body)
			}
		}
		return nil
	})
	for _, svc := range instrumented {
		if code, _, b := do(t, http.MethodGet, "http://"+dabba.Proc(svc).Addr+"/healthz", nil, ""); code != http.StatusOK {
			t.Errorf("%s /healthz = %d %s while the broker is down, want 200 (alive)", svc, code, b)
		}
	}
	rabbitmqctl(t, "start_app")
	started = true
	eventually(t, 60*time.Second, "every /readyz recovers", func() error {
		for _, svc := range instrumented {
			if code, body := readyz(svc); code != http.StatusOK {
				return fmt.Errorf("%s /readyz = %d %s", svc, code, body)
			}
		}
		return nil
	})
	for _, svc := range instrumented {
		if v, _ := sum(scrape(t, "http://"+dabba.Proc(svc).Addr+"/metrics"), metrics.BrokerReconnects); v < 1 {
			t.Errorf("%s %s = %v after the broker came back, want ≥ 1", svc, metrics.BrokerReconnects, v)
		}
	}
}
