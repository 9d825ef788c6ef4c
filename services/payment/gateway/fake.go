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
	Requests         int `json:"requests"`          // charge and refund requests that passed validation
	InjectedFailures int `json:"injected_failures"` // answered 503
	Replays          int `json:"replays"`           // answered from an earlier charge or refund with the same key
	Conflicts        int `json:"conflicts"`         // key in flight (409) or reused for another body (422)
	Charges          int `json:"charges"`           // charges created
	Refunds          int `json:"refunds"`           // refunds created
	Voids            int `json:"voids"`             // keys voided before any charge
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
	voided   map[string]bool   // charge keys voided before any charge
	byCharge map[string]string // charge id → its key
	refunds  map[string]*refundRecord
	refundOf map[string]string // charge id → the key of its refund
	rkeys    []string          // refund keys in arrival order
	stats    FakeStats
}

type refundRecord struct {
	req    RefundRequest
	refund Refund
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
	f := &Fake{cfg: cfg, rng: rand.New(src), byKey: map[string]*record{}, inflight: map[string]bool{}, voided: map[string]bool{},
		byCharge: map[string]string{}, refunds: map[string]*refundRecord{}, refundOf: map[string]string{}}
	f.mux = http.NewServeMux()
	f.mux.HandleFunc("POST /v1/charges", f.handleCharge)
	f.mux.HandleFunc("GET /v1/charges", f.handleList)
	f.mux.HandleFunc("POST /v1/charges/void", f.handleVoid)
	f.mux.HandleFunc("POST /v1/refunds", f.handleRefund)
	f.mux.HandleFunc("GET /v1/refunds", f.handleRefunds)
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
//	POST /v1/charges/void        {"idempotency_key"}: never charge with it, or the charge made with it
//	POST /v1/refunds             refund a charge in full; Idempotency-Key header required
//	GET  /v1/refunds[?order_id=] the refunds made, oldest first
//	GET  /v1/admin/config        the current fail_rate, latency_ms, decline_amount_cents
//	PUT  /v1/admin/config        change any of them at runtime
//	GET  /v1/admin/stats         FakeStats
//	GET  /healthz, /readyz
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

// Charges returns the charges made for orderID ("" for all), oldest first.
func (f *Fake) Charges(orderID string) []Charge {
	f.mu.Lock()
	defer f.mu.Unlock()
	return ofOrder(f.keys, func(k string) (Charge, string) { c := f.byKey[k].charge; return c, c.OrderID }, orderID)
}

// ofOrder returns what each of keys names (by get, with its order), in
// their order, for orderID or for every order when it is "".
func ofOrder[T any](keys []string, get func(key string) (T, string), orderID string) []T {
	out := []T{}
	for _, k := range keys {
		if v, o := get(k); orderID == "" || o == orderID {
			out = append(out, v)
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

// Refunds returns the refunds made for orderID ("" for all), oldest first.
func (f *Fake) Refunds(orderID string) []Refund {
	f.mu.Lock()
	defer f.mu.Unlock()
	return ofOrder(f.rkeys, func(k string) (Refund, string) { r := f.refunds[k].refund; return r, r.OrderID }, orderID)
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
	key, ok := idempotencyKey(w, r)
	if !ok {
		return
	}
	var req ChargeRequest
	if !decode(w, r, &req) {
		writeError(w, http.StatusBadRequest, "body must be one JSON object {order_id, amount_cents, currency}")
		return
	}
	if msg := validate(req); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}

	f.process(w, key, func() answer { return f.settle(key, req) })
}

// process answers a request that charges or refunds with key: a 409 while
// another with the same key is in flight; otherwise, once the configured
// latency has passed, an injected failure (FailRate) or settle's answer.
// settle runs under f.mu, the lock under which the key leaves the
// in-flight set, so a retry sent the moment the answer arrives sees what
// settle recorded; it returns the answer rather than writing it, so no
// client is written to under the lock.
func (f *Fake) process(w http.ResponseWriter, key string, settle func() answer) {
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

	f.mu.Lock()
	delete(f.inflight, key)
	var a answer
	if f.rng.Float64() < f.cfg.FailRate {
		f.stats.InjectedFailures++
		a = answer{status: http.StatusServiceUnavailable, body: errorBody("provider unavailable (injected failure)")}
	} else {
		a = settle()
	}
	f.mu.Unlock()
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

// settle decides a charge request (process's settle): a key voided, a
// replay, a conflict, or a new charge.
func (f *Fake) settle(key string, req ChargeRequest) answer {
	if f.voided[key] {
		return answer{status: http.StatusGone, body: errorBody("this Idempotency-Key was voided: no charge will be made with it")}
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
	f.byCharge[c.ID] = key
	f.keys = append(f.keys, key)
	if len(f.keys) > maxCharges {
		delete(f.byCharge, f.byKey[f.keys[0]].charge.ID)
		delete(f.byKey, f.keys[0])
		f.keys = f.keys[1:]
	}
	f.stats.Charges++
	return answer{status: chargeStatus(c, http.StatusCreated), body: c}
}

// handleVoid handles "POST /v1/charges/void": after it, no charge is made
// with the key; or, if one was, the answer is that charge (the merchant
// refunds it). A charge with the key still in flight is 409: ask again.
func (f *Fake) handleVoid(w http.ResponseWriter, r *http.Request) {
	var body struct {
		IdempotencyKey string `json:"idempotency_key"`
	}
	if !decode(w, r, &body) || body.IdempotencyKey == "" {
		writeError(w, http.StatusBadRequest, `body must be one JSON object {"idempotency_key"}`)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch prev, charged := f.byKey[body.IdempotencyKey]; {
	case f.inflight[body.IdempotencyKey]:
		f.stats.Conflicts++
		writeError(w, http.StatusConflict, "a charge with this Idempotency-Key is still being processed")
	case charged:
		writeJSON(w, http.StatusOK, Void{Charge: &prev.charge})
	default:
		if !f.voided[body.IdempotencyKey] {
			f.voided[body.IdempotencyKey] = true
			f.stats.Voids++
		}
		writeJSON(w, http.StatusOK, Void{Voided: true})
	}
}

// handleRefund handles "POST /v1/refunds": a succeeded charge is refunded
// in full, once per key (the same key and body get the same refund) and
// once per charge (another key for a refunded charge is 422).
func (f *Fake) handleRefund(w http.ResponseWriter, r *http.Request) {
	key, ok := idempotencyKey(w, r)
	if !ok {
		return
	}
	var req RefundRequest
	if !decode(w, r, &req) || req.ChargeID == "" || req.AmountCents <= 0 || len(req.Currency) != 3 {
		writeError(w, http.StatusBadRequest, "body must be one JSON object {charge_id, order_id, amount_cents > 0, currency}")
		return
	}
	f.process(w, key, func() answer { return f.settleRefund(key, req) })
}

// settleRefund decides a refund request (process's settle).
func (f *Fake) settleRefund(key string, req RefundRequest) answer {
	if prev, ok := f.refunds[key]; ok {
		if prev.req != req {
			f.stats.Conflicts++
			return answer{status: http.StatusUnprocessableEntity, body: errorBody("Idempotency-Key already used for a different refund")}
		}
		f.stats.Replays++
		return answer{status: http.StatusOK, body: prev.refund, replayed: true}
	}
	charge, ok := f.byKey[f.byCharge[req.ChargeID]]
	switch {
	case !ok || charge.charge.OrderID != req.OrderID:
		return answer{status: http.StatusUnprocessableEntity, body: errorBody("no such charge for this order")}
	case charge.charge.Status != StatusSucceeded:
		return answer{status: http.StatusUnprocessableEntity, body: errorBody("only a succeeded charge can be refunded")}
	case f.refundOf[req.ChargeID] != "":
		return answer{status: http.StatusUnprocessableEntity, body: errorBody("this charge is refunded already")}
	case req.AmountCents != charge.charge.AmountCents || req.Currency != charge.charge.Currency:
		return answer{status: http.StatusUnprocessableEntity, body: errorBody("a refund is of the whole charge")}
	}
	rf := Refund{ID: "re_" + crand.Text()[:16], ChargeID: req.ChargeID, OrderID: req.OrderID, AmountCents: req.AmountCents,
		Currency: req.Currency, Status: StatusSucceeded, IdempotencyKey: key, CreatedAt: time.Now().UTC()}
	f.refunds[key] = &refundRecord{req: req, refund: rf}
	f.refundOf[req.ChargeID] = key
	f.rkeys = append(f.rkeys, key)
	f.stats.Refunds++
	return answer{status: http.StatusCreated, body: rf}
}

// handleRefunds handles "GET /v1/refunds".
func (f *Fake) handleRefunds(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, f.Refunds(r.URL.Query().Get("order_id")))
}

// idempotencyKey returns the request's Idempotency-Key, or answers 400
// and reports false when it has none (or one over 255 characters).
func idempotencyKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" || len(key) > 255 {
		writeError(w, http.StatusBadRequest, "an Idempotency-Key header of 1 to 255 characters is required")
		return "", false
	}
	return key, true
}

// decode reads one JSON object of at most 16 KiB into v, unknown fields
// refused; it reports whether it could.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	return dec.Decode(v) == nil && dec.Decode(&struct{}{}) == io.EOF
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
