package gateway

import (
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// maxCharges bounds the fake's memory: past it the oldest charges (and
// their idempotency keys) are forgotten. A test run makes far fewer.
const maxCharges = 100_000

// maxLatency bounds what the admin endpoint accepts, so a typo cannot hang
// every charge (and the server's graceful shutdown) for hours.
const maxLatency = time.Minute

// FakeConfig shapes the fake provider's behaviour.
type FakeConfig struct {
	// FailRate is the probability (0..1) that a charge request is answered
	// 503 without charging anything.
	FailRate float64
	// Latency is spent on every charge request before it is answered.
	Latency time.Duration
	// DeclineAmountCents makes charges of exactly this amount decline
	// (0: never), so tests can provoke order.payment_failed.
	DeclineAmountCents int64
	// Rand decides which requests fail; nil seeds one at random. Tests pass
	// a fixed source to make FailRate between 0 and 1 reproducible.
	Rand rand.Source
}

// FakeStats counts what the fake received, so fault tests can prove that
// failures were injected and retried.
type FakeStats struct {
	Requests         int `json:"requests"`          // charge requests that passed validation
	InjectedFailures int `json:"injected_failures"` // answered 503
	Replays          int `json:"replays"`           // answered from an earlier charge with the same key
	Conflicts        int `json:"conflicts"`         // key in flight (409) or reused for another body (422)
	Charges          int `json:"charges"`           // charges created
}

// Fake is an in-memory payment provider. Like real providers it honours
// idempotency keys (same key and body: the same charge; same key, other
// body: 422; same key while the first request is still being processed:
// 409), and it keeps working on a charge after the client gives up, so a
// client timeout really does leave the caller not knowing whether the card
// was charged. It keeps every charge, so tests can check that each order was
// charged exactly once.
type Fake struct {
	mux *http.ServeMux

	mu       sync.Mutex
	cfg      FakeConfig
	rng      *rand.Rand
	byKey    map[string]*record
	keys     []string // in arrival order: listing and eviction
	inflight map[string]bool
	stats    FakeStats
}

type record struct {
	req    ChargeRequest
	charge Charge
}

// NewFake returns a fake provider.
func NewFake(cfg FakeConfig) *Fake {
	src := cfg.Rand
	if src == nil {
		src = rand.NewPCG(rand.Uint64(), rand.Uint64())
	}
	cfg.Rand = nil
	f := &Fake{cfg: cfg, rng: rand.New(src), byKey: map[string]*record{}, inflight: map[string]bool{}}
	f.mux = http.NewServeMux()
	f.mux.HandleFunc("POST /v1/charges", f.handleCharge)
	f.mux.HandleFunc("GET /v1/charges", f.handleList)
	f.mux.HandleFunc("GET /v1/admin/config", f.handleConfigGet)
	f.mux.HandleFunc("PUT /v1/admin/config", f.handleConfigPut)
	f.mux.HandleFunc("GET /v1/admin/stats", f.handleStats)
	f.mux.HandleFunc("GET /healthz", handleHealth)
	f.mux.HandleFunc("GET /readyz", handleHealth)
	return f
}

// ServeHTTP serves the provider's API:
//
//	POST /v1/charges             charge; Idempotency-Key header required
//	GET  /v1/charges[?order_id=] the charges made, oldest first
//	GET  /v1/admin/config        the current fail_rate, latency_ms, decline_amount_cents
//	PUT  /v1/admin/config        change any of them at runtime
//	GET  /v1/admin/stats         FakeStats
//	GET  /healthz, /readyz
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

// Charges returns the charges made for orderID ("" for all), oldest first.
func (f *Fake) Charges(orderID string) []Charge {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []Charge{}
	for _, k := range f.keys {
		if c := f.byKey[k].charge; orderID == "" || c.OrderID == orderID {
			out = append(out, c)
		}
	}
	return out
}

// Stats returns what the fake has counted so far.
func (f *Fake) Stats() FakeStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// SetFailRate changes the probability of a 503 from the next request on.
func (f *Fake) SetFailRate(p float64) {
	f.mu.Lock()
	f.cfg.FailRate = p
	f.mu.Unlock()
}

// SetLatency changes the time spent on each charge from the next request on.
func (f *Fake) SetLatency(d time.Duration) {
	f.mu.Lock()
	f.cfg.Latency = d
	f.mu.Unlock()
}

// handleCharge handles "POST /v1/charges".
func (f *Fake) handleCharge(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" || len(key) > 255 {
		writeError(w, http.StatusBadRequest, "an Idempotency-Key header of 1 to 255 characters is required")
		return
	}
	var req ChargeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF {
		writeError(w, http.StatusBadRequest, "body must be one JSON object {order_id, amount_cents, currency}")
		return
	}
	if msg := validate(req); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}

	f.mu.Lock()
	f.stats.Requests++
	if f.inflight[key] {
		f.stats.Conflicts++
		f.mu.Unlock()
		writeError(w, http.StatusConflict, "a request with this Idempotency-Key is still being processed")
		return
	}
	f.inflight[key] = true
	latency := f.cfg.Latency
	f.mu.Unlock()

	// Not cut short when the client leaves: a real provider finishes what
	// it started, which is what makes idempotency keys necessary.
	time.Sleep(latency)

	a := f.settle(key, req)
	if a.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	if a.replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	writeJSON(w, a.status, a.body)
}

type answer struct {
	status   int
	body     any
	replayed bool
}

// settle decides a charge request once its latency has passed: an injected
// failure, a replay, a conflict, or a new charge. It returns the answer
// rather than writing it, so no client is written to under the lock. The
// key leaves the in-flight set here, under the same lock that records the
// charge, so a retry sent the moment the answer arrives sees the charge.
func (f *Fake) settle(key string, req ChargeRequest) answer {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inflight, key)
	if f.rng.Float64() < f.cfg.FailRate {
		f.stats.InjectedFailures++
		return answer{status: http.StatusServiceUnavailable, body: errorBody("provider unavailable (injected failure)")}
	}
	if prev, ok := f.byKey[key]; ok {
		if prev.req != req {
			f.stats.Conflicts++
			return answer{status: http.StatusUnprocessableEntity, body: errorBody("Idempotency-Key already used for a different request")}
		}
		f.stats.Replays++
		return answer{status: chargeStatus(prev.charge, http.StatusOK), body: prev.charge, replayed: true}
	}
	c := Charge{ID: "ch_" + crand.Text()[:16], OrderID: req.OrderID, AmountCents: req.AmountCents, Currency: req.Currency,
		Status: StatusSucceeded, IdempotencyKey: key, CreatedAt: time.Now().UTC()}
	if f.cfg.DeclineAmountCents != 0 && req.AmountCents == f.cfg.DeclineAmountCents {
		c.Status = StatusDeclined
	}
	f.byKey[key] = &record{req: req, charge: c}
	f.keys = append(f.keys, key)
	if len(f.keys) > maxCharges {
		delete(f.byKey, f.keys[0])
		f.keys = f.keys[1:]
	}
	f.stats.Charges++
	return answer{status: chargeStatus(c, http.StatusCreated), body: c}
}

func validate(req ChargeRequest) string {
	switch {
	case req.OrderID == "":
		return "order_id is required"
	case req.AmountCents <= 0:
		return "amount_cents must be positive"
	case len(req.Currency) != 3:
		return "currency must be a three-letter ISO 4217 code"
	}
	return ""
}

// chargeStatus answers a declined charge with 402, as card providers do,
// with the charge record as the body.
func chargeStatus(c Charge, ok int) int {
	if c.Status == StatusDeclined {
		return http.StatusPaymentRequired
	}
	return ok
}

// handleList handles "GET /v1/charges".
func (f *Fake) handleList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, f.Charges(r.URL.Query().Get("order_id")))
}

type configBody struct {
	FailRate           *float64 `json:"fail_rate"`
	LatencyMS          *int64   `json:"latency_ms"`
	DeclineAmountCents *int64   `json:"decline_amount_cents"`
}

// handleConfigGet handles "GET /v1/admin/config".
func (f *Fake) handleConfigGet(w http.ResponseWriter, _ *http.Request) {
	f.mu.Lock()
	rate, ms, decline := f.cfg.FailRate, f.cfg.Latency.Milliseconds(), f.cfg.DeclineAmountCents
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, configBody{FailRate: &rate, LatencyMS: &ms, DeclineAmountCents: &decline})
}

// handleConfigPut handles "PUT /v1/admin/config": fields left out keep their
// value.
func (f *Fake) handleConfigPut(w http.ResponseWriter, r *http.Request) {
	var body configBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "body must be {fail_rate, latency_ms, decline_amount_cents}")
		return
	}
	var err error
	switch {
	case body.FailRate != nil && (*body.FailRate < 0 || *body.FailRate > 1):
		err = errors.New("fail_rate must be within 0..1")
	case body.LatencyMS != nil && (*body.LatencyMS < 0 || *body.LatencyMS > maxLatency.Milliseconds()):
		err = errors.New("latency_ms must be within 0..60000")
	case body.DeclineAmountCents != nil && *body.DeclineAmountCents < 0:
		err = errors.New("decline_amount_cents must not be negative")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	f.mu.Lock()
	if body.FailRate != nil {
		f.cfg.FailRate = *body.FailRate
	}
	if body.LatencyMS != nil {
		f.cfg.Latency = time.Duration(*body.LatencyMS) * time.Millisecond
	}
	if body.DeclineAmountCents != nil {
		f.cfg.DeclineAmountCents = *body.DeclineAmountCents
	}
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// handleStats handles "GET /v1/admin/stats".
func (f *Fake) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, f.Stats())
}

func handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeError(w http.ResponseWriter, status int, msg string) { writeJSON(w, status, errorBody(msg)) }

func errorBody(msg string) map[string]string { return map[string]string{"error": msg} }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
