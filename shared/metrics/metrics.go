// Package metrics is Dabba's Prometheus instrumentation: one registry per
// service run (no global state, so services run in-process by tests never
// share counters), the metric names in one place, and cheap hooks for the
// hot paths: per-queue counters are looked up once per consumer, not per
// message.
//
// Every method works on a nil *Set and does nothing, so code under test
// that was given no metrics needs no special case.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names, for dashboards and tests.
const (
	HTTPRequestDuration    = "dabba_http_request_duration_seconds"
	MessagesConsumed       = "dabba_messages_consumed_total"
	MessagesAcked          = "dabba_messages_acked_total"
	MessagesRetried        = "dabba_messages_retried_total"
	ConsumerWaiting        = "dabba_consumer_waiting"
	ConsumerOutages        = "dabba_consumer_outages_total"
	ConsumerHeldEvents     = "dabba_consumer_held_events"
	MessagesDeadLettered   = "dabba_messages_dead_lettered_total"
	HandlerDuration        = "dabba_message_handler_duration_seconds"
	PublishConfirmDuration = "dabba_broker_publish_confirm_seconds"
	PublishUnconfirmed     = "dabba_broker_publish_unconfirmed_total"
	BrokerReconnects       = "dabba_broker_reconnects_total"
	BrokerConnected        = "dabba_broker_connected"
	OutboxUnsent           = "dabba_outbox_unsent_events"
	OutboxOldestAge        = "dabba_outbox_oldest_unsent_age_seconds"
	TrackingSocketsOpen    = "dabba_tracking_websockets_open"
	TrackingFixesIn        = "dabba_tracking_fixes_in_total"
	TrackingFixesOut       = "dabba_tracking_fixes_out_total"
	TrackingFixesDropped   = "dabba_tracking_fixes_dropped_total"
	TrackingFixSeconds     = "dabba_tracking_fix_seconds"
)

// latencyBuckets span 1 ms to about 4 s, where a request's or a handler's
// time falls; confirmBuckets start lower, at half a millisecond.
var (
	latencyBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 10)
	confirmBuckets = prometheus.ExponentialBuckets(0.0005, 2.5, 10)
)

// Set is one service run's metrics and the registry that serves them.
type Set struct {
	// Registry holds every metric of this run; Handler serves it.
	Registry *prometheus.Registry

	http        *prometheus.HistogramVec
	consumed    *prometheus.CounterVec
	acked       *prometheus.CounterVec
	retried     *prometheus.CounterVec
	waiting     *prometheus.GaugeVec
	held        *prometheus.GaugeVec
	outages     *prometheus.CounterVec
	dead        *prometheus.CounterVec
	handler     *prometheus.HistogramVec
	confirm     prometheus.Histogram
	unconfirmed prometheus.Counter
}

// New returns a fresh Set with its own registry, holding the Go runtime and
// process collectors and the metrics every service has.
func New() *Set {
	reg := prometheus.NewRegistry()
	f := factory{reg}
	s := &Set{
		Registry: reg,
		http: f.histogramVec(HTTPRequestDuration, "Time to serve an HTTP request, by chi route pattern, method and status.",
			latencyBuckets, "route", "method", "status"),
		consumed: f.counterVec(MessagesConsumed, "Messages received from a queue and handed to a handler.", "queue"),
		acked:    f.counterVec(MessagesAcked, "Messages acked after their handler succeeded.", "queue"),
		retried:  f.counterVec(MessagesRetried, "Messages whose handler failed, sent to the retry ladder (a nack, delayed).", "queue"),
		outages: f.counterVec(ConsumerOutages, "Times a consumer stopped taking work because a dependency was unavailable, by dependency.",
			"queue", "dependency"),
		dead: f.counterVec(MessagesDeadLettered, "Messages moved to the dead-letter queue, by reason.", "queue", "reason"),
		handler: f.histogramVec(HandlerDuration, "Time a handler took for one message (or one batch).",
			latencyBuckets, "queue"),
	}
	s.waiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ConsumerWaiting,
		Help: "1 while a consumer holds its messages and takes no new work, waiting for a dependency (database, payment-provider, smtp, broker) to answer again."},
		[]string{"queue", "dependency"})
	s.held = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ConsumerHeldEvents,
		Help: "Events an ordered consumer holds back until an earlier event of their order is applied (shared/consumer), as last counted."},
		[]string{"queue"})
	reg.MustRegister(s.waiting, s.held)
	s.confirm = prometheus.NewHistogram(prometheus.HistogramOpts{Name: PublishConfirmDuration,
		Help: "Time from a publish (the first of its batch) to the broker's confirm.", Buckets: confirmBuckets})
	s.unconfirmed = prometheus.NewCounter(prometheus.CounterOpts{Name: PublishUnconfirmed,
		Help: "Messages the broker nacked or never confirmed (they are published again)."})
	reg.MustRegister(s.confirm, s.unconfirmed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}

type factory struct{ reg *prometheus.Registry }

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(v)
	return v
}

// Handler serves the registry in the Prometheus exposition format.
func (s *Set) Handler() http.Handler {
	if s == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{Registry: s.Registry})
}

// Middleware times every request by its chi route pattern (never the raw
// path, which would make a series per order id), method and status, each
// from a fixed set: what a client sends (a path, a made-up method) never
// makes a new series, so no client can grow the registry.
func (s *Set) Middleware(next http.Handler) http.Handler {
	if s == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		if ww.Status() == http.StatusSwitchingProtocols {
			return // a WebSocket's lifetime is no request latency
		}
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil {
			if p := rc.RoutePattern(); p != "" {
				route = p
			}
		}
		s.http.WithLabelValues(route, methodLabel(r.Method), statusLabel(ww.Status())).Observe(time.Since(start).Seconds())
	})
}

// methodLabel is the method, or "other" for one HTTP does not define.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
		http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// statusLabels spells the status codes the services answer with; any other
// is counted under its class ("4xx"), so the set of labels stays fixed.
var statusLabels = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 431, 500, 503} {
		m[c] = strconv.Itoa(c)
	}
	return m
}()

// statusLabel spells a status code without allocating.
func statusLabel(code int) string {
	if code == 0 {
		return "200" // nothing written means 200
	}
	if l, ok := statusLabels[code]; ok {
		return l
	}
	if code >= 100 && code < 600 {
		return [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}[code/100-1]
	}
	return "other"
}

// Queue is a consumer's counters for one queue, looked up once.
type Queue struct {
	consumed, acked, retried     prometheus.Counter
	deadPermanent, deadExhausted prometheus.Counter
	handler                      prometheus.Observer
	held                         prometheus.Gauge
	waiting                      *prometheus.GaugeVec
	outages                      *prometheus.CounterVec
	dead                         *prometheus.CounterVec
	queue                        string
}

// Dead-letter reasons, as the label reason spells them (the same words as
// the x-dabba-reason header).
const (
	ReasonPermanent = "permanent-error"
	ReasonExhausted = "retries-exhausted"
)

// Queue returns the counters for queue; nil when s is nil.
func (s *Set) Queue(queue string) *Queue {
	if s == nil {
		return nil
	}
	q := &Queue{
		consumed:      s.consumed.WithLabelValues(queue),
		acked:         s.acked.WithLabelValues(queue),
		retried:       s.retried.WithLabelValues(queue),
		deadPermanent: s.dead.WithLabelValues(queue, ReasonPermanent),
		deadExhausted: s.dead.WithLabelValues(queue, ReasonExhausted),
		handler:       s.handler.WithLabelValues(queue),
		held:          s.held.WithLabelValues(queue),
		waiting:       s.waiting,
		dead:          s.dead,
		outages:       s.outages,
		queue:         queue,
	}
	// Every consumer depends on these two: their series exist (at 0)
	// before any outage, so a dashboard or an alert finds them.
	for _, dep := range []string{"database", "broker"} {
		q.waiting.WithLabelValues(queue, dep)
		q.outages.WithLabelValues(queue, dep)
	}
	return q
}

// Waiting records that the consumer waits for dependency, or, with "", that
// it waits no more.
func (q *Queue) Waiting(dependency, was string) {
	if q == nil {
		return
	}
	if was != "" {
		q.waiting.WithLabelValues(q.queue, was).Set(0)
	}
	if dependency != "" {
		q.waiting.WithLabelValues(q.queue, dependency).Set(1)
		if was == "" {
			q.outages.WithLabelValues(q.queue, dependency).Inc()
		}
	}
}

// Consumed counts n messages handed to a handler.
func (q *Queue) Consumed(n int) {
	if q != nil {
		q.consumed.Add(float64(n))
	}
}

// Acked counts n messages acked.
func (q *Queue) Acked(n int) {
	if q != nil {
		q.acked.Add(float64(n))
	}
}

// Retried counts a message sent to the retry ladder.
func (q *Queue) Retried() {
	if q != nil {
		q.retried.Inc()
	}
}

// DeadLettered counts a message moved to the dead-letter queue for reason
// (ReasonPermanent, ReasonExhausted, or an ordered consumer's
// "waited-too-long").
func (q *Queue) DeadLettered(reason string) {
	switch {
	case q == nil:
	case reason == ReasonPermanent:
		q.deadPermanent.Inc()
	case reason == ReasonExhausted:
		q.deadExhausted.Inc()
	default:
		q.dead.WithLabelValues(q.queue, reason).Inc()
	}
}

// Held records how many events the consumer holds back (shared/consumer).
func (q *Queue) Held(n int) {
	if q != nil {
		q.held.Set(float64(n))
	}
}

// Handled records how long a handler call took.
func (q *Queue) Handled(d time.Duration) {
	if q != nil {
		q.handler.Observe(d.Seconds())
	}
}

// Confirmed records the time from a publish to its confirm.
func (s *Set) Confirmed(d time.Duration) {
	if s != nil {
		s.confirm.Observe(d.Seconds())
	}
}

// Unconfirmed counts n messages the broker did not confirm.
func (s *Set) Unconfirmed(n int) {
	if s != nil && n > 0 {
		s.unconfirmed.Add(float64(n))
	}
}

// WatchBroker exposes a connection's reconnect count and state, read at
// scrape time so the connection itself pays nothing.
func (s *Set) WatchBroker(reconnects func() int64, connected func() bool) {
	if s == nil {
		return
	}
	s.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: BrokerReconnects,
			Help: "Times the broker connection came back after a loss."},
			func() float64 { return float64(reconnects()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: BrokerConnected,
			Help: "1 while the broker connection is open."},
			func() float64 {
				if connected() {
					return 1
				}
				return 0
			}))
}

// Backlog reports how many outbox events wait to be published and the age
// of the oldest.
type Backlog func(ctx context.Context) (n int64, oldest time.Duration, err error)

// WatchOutbox exposes the outbox backlog and its oldest row's age, queried
// at scrape time (one indexed query per scrape, nothing on the relay's
// path). Only the service that runs the relay should call it.
func (s *Set) WatchOutbox(backlog Backlog) {
	if s != nil {
		s.Registry.MustRegister(outboxCollector{backlog})
	}
}

var (
	outboxUnsentDesc = prometheus.NewDesc(OutboxUnsent, "Outbox events not yet confirmed by the broker.", nil, nil)
	outboxAgeDesc    = prometheus.NewDesc(OutboxOldestAge, "Age of the oldest outbox event not yet confirmed (0 when none).", nil, nil)
)

type outboxCollector struct{ backlog Backlog }

func (c outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxUnsentDesc
	ch <- outboxAgeDesc
}

func (c outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, age, err := c.backlog(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(outboxUnsentDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(outboxUnsentDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, age.Seconds())
}

// Tracking reads the tracking service's own counters (kept for its /stats
// endpoint) at scrape time.
type Tracking struct {
	SocketsOpen func() int
	FixesIn     func() int64 // accepted from riders
	FixesOut    func() int64 // written to customers
	Stale       func() int64 // dropped: not newer than one already seen
	Coalesced   func() int64 // dropped: replaced by a newer fix before it was sent
}

// fixBuckets span 0.2 ms to about 2 s in steps of 1.5: fine enough to
// tell where a fix's 100 ms budget goes.
var fixBuckets = prometheus.ExponentialBuckets(0.0002, 1.5, 24)

// TrackingFixTimes returns the histogram of where a rider's fix spends its
// time on its way to a customer, by path ("local", "broker") and stage
// (see services/tracking/times.go); nil on a nil Set.
func (s *Set) TrackingFixTimes() *prometheus.HistogramVec {
	if s == nil {
		return nil
	}
	return factory{s.Registry}.histogramVec(TrackingFixSeconds,
		"Time a rider's fix spent in each stage on its way to a customer's socket, by path (local: ingested here; broker: from another instance).",
		fixBuckets, "path", "stage")
}

// WatchTracking exposes the tracking service's counters.
func (s *Set) WatchTracking(t Tracking) {
	if s == nil {
		return
	}
	counter := func(name, help string, f func() int64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f()) })
	}
	s.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: TrackingSocketsOpen, Help: "Open WebSockets (customers and riders)."},
			func() float64 { return float64(t.SocketsOpen()) }),
		counter(TrackingFixesIn, "Rider fixes accepted for publishing.", t.FixesIn, nil),
		counter(TrackingFixesOut, "Fixes written to customers' sockets.", t.FixesOut, nil),
		counter(TrackingFixesDropped, "Fixes not sent to customers, by reason.", t.Stale, prometheus.Labels{"reason": "stale"}),
		counter(TrackingFixesDropped, "Fixes not sent to customers, by reason.", t.Coalesced, prometheus.Labels{"reason": "coalesced"}),
	)
}
