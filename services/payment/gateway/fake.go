package gateway

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// FakeConfig shapes the fake provider's behaviour.
type FakeConfig struct {
	// FailRate is the share of requests answered 503 without charging.
	FailRate float64 `json:"fail_rate"`
	// Latency is added to every charge request.
	Latency time.Duration `json:"-"`
	// DeclineAmountCents makes charges of exactly this amount decline
	// (0: never), so tests can provoke order.payment_failed.
	DeclineAmountCents int64 `json:"decline_amount_cents"`
}

// Fake is an in-memory payment provider that honours its own idempotency
// keys, like real providers do. It keeps every charge, so tests can check
// that each order was charged exactly once.
type Fake struct {
	mu      sync.Mutex
	cfg     FakeConfig
	byKey   map[string]fakeCharge
	charges []Charge
}

type fakeCharge struct {
	req    ChargeRequest
	charge Charge
}

// NewFake returns a fake provider.
func NewFake(cfg FakeConfig) *Fake {
	return &Fake{cfg: cfg, byKey: map[string]fakeCharge{}}
}

// ServeHTTP serves POST /v1/charges, GET /v1/charges[?order_id=],
// PUT /v1/admin/config and GET /healthz.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v1/charges" && r.Method == http.MethodPost:
		f.charge(w, r)
	case r.URL.Path == "/v1/charges" && r.Method == http.MethodGet:
		f.list(w, r)
	case r.URL.Path == "/v1/admin/config" && r.Method == http.MethodPut:
		f.configure(w, r)
	case r.URL.Path == "/healthz" || r.URL.Path == "/readyz":
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
	}
}

func (f *Fake) charge(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "Idempotency-Key header is required"})
		return
	}
	var req ChargeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.OrderID == "" || req.AmountCents < 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be {order_id, amount_cents >= 0, currency}"})
		return
	}
	f.mu.Lock()
	cfg := f.cfg
	f.mu.Unlock()
	select {
	case <-time.After(cfg.Latency):
	case <-r.Context().Done():
		return
	}
	if rand.Float64() < cfg.FailRate {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "provider unavailable (injected)"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if prev, ok := f.byKey[key]; ok {
		if prev.req != req {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": "Idempotency-Key reused with another request"})
			return
		}
		writeJSON(w, http.StatusOK, prev.charge)
		return
	}
	status := "succeeded"
	if cfg.DeclineAmountCents != 0 && req.AmountCents == cfg.DeclineAmountCents {
		status = "declined"
	}
	c := Charge{ID: fmt.Sprintf("ch_%d", len(f.charges)+1), OrderID: req.OrderID, AmountCents: req.AmountCents,
		Currency: req.Currency, Status: status, IdempotencyKey: key}
	f.byKey[key] = fakeCharge{req: req, charge: c}
	f.charges = append(f.charges, c)
	writeJSON(w, http.StatusCreated, c)
}

func (f *Fake) list(w http.ResponseWriter, r *http.Request) {
	order := r.URL.Query().Get("order_id")
	f.mu.Lock()
	out := []Charge{}
	for _, c := range f.charges {
		if order == "" || c.OrderID == order {
			out = append(out, c)
		}
	}
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (f *Fake) configure(w http.ResponseWriter, r *http.Request) {
	var body struct {
		FailRate           *float64 `json:"fail_rate"`
		LatencyMS          *int     `json:"latency_ms"`
		DeclineAmountCents *int64   `json:"decline_amount_cents"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be {fail_rate, latency_ms, decline_amount_cents}"})
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
