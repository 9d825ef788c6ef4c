package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// exposition returns what s serves at /metrics.
func exposition(t *testing.T, s *Set) string {
	t.Helper()
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics = %d %s", w.Code, w.Body)
	}
	return w.Body.String()
}

func TestMiddlewareLabelsByRoutePattern(t *testing.T) {
	s := New()
	r := chi.NewRouter()
	r.Use(s.Middleware)
	r.Get("/v1/orders/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	r.Post("/v1/orders", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	for _, req := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/v1/orders/0b8e0b9c-9d7b-4a8e-8b1c-2f9a4e1d3c5b", nil),
		httptest.NewRequest(http.MethodGet, "/v1/orders/another", nil),
		httptest.NewRequest(http.MethodPost, "/v1/orders", nil),
		httptest.NewRequest(http.MethodGet, "/nowhere/1", nil),
	} {
		r.ServeHTTP(httptest.NewRecorder(), req)
	}
	out := exposition(t, s)
	for _, want := range []string{
		HTTPRequestDuration + `_count{method="GET",route="/v1/orders/{id}",status="404"} 2`,
		HTTPRequestDuration + `_count{method="POST",route="/v1/orders",status="201"} 1`,
		HTTPRequestDuration + `_count{method="GET",route="unmatched",status="404"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in\n%s", want, out)
		}
	}
	if strings.Contains(out, "0b8e0b9c") || strings.Contains(out, "/nowhere") {
		t.Error("a raw path became a label")
	}
}

// TestMiddlewareLabelsFixed: whatever clients send (made-up methods, any
// path, handlers answering odd codes), the request metric's label values
// come from a fixed set: a flood of them cannot grow the registry.
func TestMiddlewareLabelsFixed(t *testing.T) {
	s := New()
	r := chi.NewRouter()
	r.Use(s.Middleware)
	r.Get("/v1/orders/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	r.HandleFunc("/any", func(w http.ResponseWriter, r *http.Request) {})
	for i := range 500 {
		for _, req := range []*http.Request{
			httptest.NewRequest(fmt.Sprintf("M%d", i), "/any", nil),
			httptest.NewRequest(http.MethodGet, fmt.Sprintf("/v1/orders/%d", i), nil),
			httptest.NewRequest(fmt.Sprintf("X%d", i), fmt.Sprintf("/nowhere/%d", i), nil),
		} {
			r.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	if n := testutil.CollectAndCount(s.http); n > 5 {
		t.Fatalf("%d series after 1500 requests of 1000 made-up methods and paths, want a handful:\n%s", n, exposition(t, s))
	}
	out := exposition(t, s)
	for _, want := range []string{
		HTTPRequestDuration + `_count{method="other",route="unmatched",status="405"} 1000`,
		HTTPRequestDuration + `_count{method="GET",route="/v1/orders/{id}",status="4xx"} 500`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in\n%s", want, out)
		}
	}
}

func TestQueueCounters(t *testing.T) {
	s := New()
	q := s.Queue("payment")
	q.Consumed(3)
	q.Acked(2)
	q.Retried()
	q.Requeued()
	q.DeadLettered(ReasonPermanent)
	q.DeadLettered(ReasonExhausted)
	q.DeadLettered(ReasonExhausted)
	q.Handled(20 * time.Millisecond)
	s.Confirmed(3 * time.Millisecond)
	s.Unconfirmed(2)
	tests := []struct {
		give string
		want float64
	}{
		{"consumed", testutil.ToFloat64(s.consumed.WithLabelValues("payment"))},
		{"acked", testutil.ToFloat64(s.acked.WithLabelValues("payment"))},
		{"retried", testutil.ToFloat64(s.retried.WithLabelValues("payment"))},
		{"requeued", testutil.ToFloat64(s.requeued.WithLabelValues("payment"))},
		{"permanent", testutil.ToFloat64(s.dead.WithLabelValues("payment", ReasonPermanent))},
		{"exhausted", testutil.ToFloat64(s.dead.WithLabelValues("payment", ReasonExhausted))},
		{"unconfirmed", testutil.ToFloat64(s.unconfirmed)},
	}
	want := map[string]float64{"consumed": 3, "acked": 2, "retried": 1, "requeued": 1, "permanent": 1, "exhausted": 2, "unconfirmed": 2}
	for _, tt := range tests {
		if tt.want != want[tt.give] {
			t.Errorf("%s = %v, want %v", tt.give, tt.want, want[tt.give])
		}
	}
	out := exposition(t, s)
	for _, w := range []string{HandlerDuration + `_count{queue="payment"} 1`, PublishConfirmDuration + "_count 1"} {
		if !strings.Contains(out, w) {
			t.Errorf("no %s in /metrics", w)
		}
	}
}

// TestSetsAreIndependent: two runs in one process (as tests run services)
// neither collide on registration nor share counts.
func TestSetsAreIndependent(t *testing.T) {
	a, b := New(), New()
	a.Queue("email").Consumed(1)
	a.WatchBroker(func() int64 { return 4 }, func() bool { return true })
	b.WatchBroker(func() int64 { return 0 }, func() bool { return false })
	if got := testutil.ToFloat64(b.consumed.WithLabelValues("email")); got != 0 {
		t.Errorf("b counted %v messages consumed by a", got)
	}
	if out := exposition(t, a); !strings.Contains(out, BrokerReconnects+" 4") || !strings.Contains(out, BrokerConnected+" 1") {
		t.Errorf("a's broker metrics missing:\n%s", out)
	}
}

func TestWatchOutbox(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		s := New()
		s.WatchOutbox(func(context.Context) (int64, time.Duration, error) { return 7, 1500 * time.Millisecond, nil })
		out := exposition(t, s)
		if !strings.Contains(out, OutboxUnsent+" 7") || !strings.Contains(out, OutboxOldestAge+" 1.5") {
			t.Errorf("outbox metrics missing:\n%s", out)
		}
	})
	t.Run("ErrDatabase", func(t *testing.T) {
		s := New()
		s.WatchOutbox(func(context.Context) (int64, time.Duration, error) { return 0, 0, errors.New("database down") })
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "database down") {
			t.Errorf("/metrics with the database down = %d %s, want a 500 naming the error", w.Code, w.Body)
		}
	})
}

func TestWatchTracking(t *testing.T) {
	s := New()
	n := func(v int64) func() int64 { return func() int64 { return v } }
	s.WatchTracking(Tracking{SocketsOpen: func() int { return 2 }, FixesIn: n(10), FixesOut: n(8), Stale: n(1), Coalesced: n(3)})
	out := exposition(t, s)
	for _, w := range []string{TrackingSocketsOpen + " 2", TrackingFixesIn + " 10", TrackingFixesOut + " 8",
		TrackingFixesDropped + `{reason="stale"} 1`, TrackingFixesDropped + `{reason="coalesced"} 3`} {
		if !strings.Contains(out, w) {
			t.Errorf("no %s in\n%s", w, out)
		}
	}
}

// TestNilSet: code given no metrics records nothing and does not crash.
func TestNilSet(t *testing.T) {
	var s *Set
	q := s.Queue("x")
	q.Consumed(1)
	q.Acked(1)
	q.Retried()
	q.Requeued()
	q.DeadLettered(ReasonPermanent)
	q.Handled(time.Second)
	s.Confirmed(time.Second)
	s.Unconfirmed(1)
	s.WatchBroker(nil, nil)
	s.WatchOutbox(nil)
	s.WatchTracking(Tracking{})
	h := s.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) }))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != http.StatusTeapot {
		t.Errorf("nil Set's middleware answered %d", w.Code)
	}
}

func BenchmarkQueueHotPath(b *testing.B) {
	q := New().Queue("payment")
	b.ReportAllocs()
	for b.Loop() {
		q.Consumed(1)
		q.Handled(time.Millisecond)
		q.Acked(1)
	}
}
