// Package gateway speaks to the payment provider: Client charges cards, and
// Fake is a provider of our own speaking the same HTTP protocol, for local
// runs and tests (configurable latency, failure rate and declines).
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ErrDeclined means the provider refused the card: a business outcome, not a
// fault, so retrying will not help; the order's payment failed.
var ErrDeclined = errors.New("charge declined")

// ErrUnavailable marks a transient failure: the provider answered 5xx, 429,
// 409 (the same key is still being processed) or 408, or could not be
// reached in time. The charge may or may not have happened; retrying with
// the same idempotency key is safe and tells which.
var ErrUnavailable = errors.New("payment provider unavailable")

// ErrRejected means the provider refused the request itself (400, 422: a
// malformed request, or an idempotency key reused for another charge).
// Retrying the same request will fail the same way.
var ErrRejected = errors.New("charge request rejected")

// Charge statuses.
const (
	StatusSucceeded = "succeeded"
	StatusDeclined  = "declined"
)

// ChargeRequest asks for an order's amount to be charged.
type ChargeRequest struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// Charge is the provider's record of a charge.
type Charge struct {
	ID             string    `json:"id"`
	OrderID        string    `json:"order_id"`
	AmountCents    int64     `json:"amount_cents"`
	Currency       string    `json:"currency"`
	Status         string    `json:"status"` // StatusSucceeded or StatusDeclined
	IdempotencyKey string    `json:"idempotency_key"`
	CreatedAt      time.Time `json:"created_at"`
}

// Client calls the provider's HTTP API.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the provider at baseURL. httpClient's
// Timeout bounds each call; nil uses http.DefaultClient, leaving the bound
// to the context.
func NewClient(baseURL string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), http: httpClient}
}

// Charge charges once per idempotency key: asking again with the same key
// returns the first charge. A declined card returns the charge record and an
// error wrapping ErrDeclined. Errors wrapping ErrUnavailable (including a
// done ctx) are worth retrying with the same key; ErrRejected is not.
func (c *Client) Charge(ctx context.Context, req ChargeRequest, idempotencyKey string) (Charge, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Charge{}, fmt.Errorf("encode charge: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/charges", bytes.NewReader(body))
	if err != nil {
		return Charge{}, fmt.Errorf("build charge request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Idempotency-Key", idempotencyKey)
	resp, err := c.http.Do(hreq)
	if err != nil {
		return Charge{}, fmt.Errorf("charge order %s: %w: %w", req.OrderID, ErrUnavailable, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Charge{}, fmt.Errorf("read charge response: %w: %w", ErrUnavailable, err)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusOK, code == http.StatusCreated, code == http.StatusPaymentRequired:
		var ch Charge
		if err := json.Unmarshal(raw, &ch); err != nil {
			// A garbled answer from a provider that did answer is most
			// likely a proxy's error page: try again.
			return Charge{}, fmt.Errorf("decode charge (status %d): %w: %w", code, ErrUnavailable, err)
		}
		if code == http.StatusPaymentRequired || ch.Status == StatusDeclined {
			return ch, fmt.Errorf("charge %s: %w", ch.ID, ErrDeclined)
		}
		return ch, nil
	case code >= 500, code == http.StatusTooManyRequests, code == http.StatusConflict, code == http.StatusRequestTimeout:
		return Charge{}, fmt.Errorf("charge order %s: %w: provider answered %d: %s", req.OrderID, ErrUnavailable, code, brief(raw))
	default:
		return Charge{}, fmt.Errorf("charge order %s: %w: provider answered %d: %s", req.OrderID, ErrRejected, code, brief(raw))
	}
}

// brief keeps an error body short enough for a log line.
func brief(raw []byte) string {
	s := strings.TrimSpace(string(raw))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
