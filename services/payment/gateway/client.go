// Package gateway speaks to the payment provider: Client charges cards,
// refunds charges and voids charges not made yet, and Fake is a provider of
// our own speaking the same HTTP protocol, for local runs and tests
// (configurable latency, failure rate and declines).
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
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

// ErrMismatch means the provider answered about another charge than the
// one asked for (another order, amount or currency): nothing that can count
// as paid, and a human's business.
var ErrMismatch = errors.New("the provider's answer does not match the request")

// ErrVoided means the idempotency key was voided before any charge was made
// with it (the order was cancelled): the provider will never charge with it.
var ErrVoided = errors.New("charge voided")

// Charge and refund statuses. Only StatusSucceeded counts as money moved.
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
// error wrapping ErrDeclined; only an answer whose status says succeeded,
// for the order, amount and currency asked, is a charge (ErrMismatch
// otherwise; an answer that is not final yet is ErrUnavailable, to ask
// again). Errors wrapping ErrUnavailable (including a done ctx) are worth
// retrying with the same key; ErrRejected and ErrVoided are not.
func (c *Client) Charge(ctx context.Context, req ChargeRequest, idempotencyKey string) (Charge, error) {
	var ch Charge
	code, err := c.call(ctx, "/v1/charges", idempotencyKey, req, &ch, http.StatusOK, http.StatusCreated, http.StatusPaymentRequired)
	what := "charge order " + req.OrderID
	switch {
	case code == http.StatusGone:
		return Charge{}, fmt.Errorf("%s: %w", what, ErrVoided)
	case err != nil:
		return Charge{}, fmt.Errorf("%s: %w", what, err)
	case ch.OrderID != req.OrderID || ch.AmountCents != req.AmountCents || ch.Currency != req.Currency:
		return ch, fmt.Errorf("%s: %w: charge %s is of %d %s for order %s, asked %d %s", what, ErrMismatch,
			ch.ID, ch.AmountCents, ch.Currency, ch.OrderID, req.AmountCents, req.Currency)
	case code == http.StatusPaymentRequired || ch.Status == StatusDeclined:
		return ch, fmt.Errorf("charge %s: %w", ch.ID, ErrDeclined)
	case ch.Status != StatusSucceeded:
		return ch, fmt.Errorf("%s: charge %s is %q, not final: %w", what, ch.ID, ch.Status, ErrUnavailable)
	}
	return ch, nil
}

// RefundRequest asks for a charge to be refunded in full.
type RefundRequest struct {
	ChargeID    string `json:"charge_id"`
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// Refund is the provider's record of a refund.
type Refund struct {
	ID             string    `json:"id"`
	ChargeID       string    `json:"charge_id"`
	OrderID        string    `json:"order_id"`
	AmountCents    int64     `json:"amount_cents"`
	Currency       string    `json:"currency"`
	Status         string    `json:"status"`
	IdempotencyKey string    `json:"idempotency_key"`
	CreatedAt      time.Time `json:"created_at"`
}

// Refund refunds a charge once per idempotency key, as Charge charges: the
// same key gets the first refund back. Only an answer that says succeeded,
// for the charge and amount asked, is a refund.
func (c *Client) Refund(ctx context.Context, req RefundRequest, idempotencyKey string) (Refund, error) {
	var r Refund
	_, err := c.call(ctx, "/v1/refunds", idempotencyKey, req, &r, http.StatusOK, http.StatusCreated)
	what := "refund charge " + req.ChargeID
	switch {
	case err != nil:
		return Refund{}, fmt.Errorf("%s: %w", what, err)
	case r.ChargeID != req.ChargeID || r.AmountCents != req.AmountCents || r.Currency != req.Currency:
		return r, fmt.Errorf("%s: %w: refund %s is of %d %s for charge %s", what, ErrMismatch, r.ID, r.AmountCents, r.Currency, r.ChargeID)
	case r.Status != StatusSucceeded:
		return r, fmt.Errorf("%s: refund %s is %q, not final: %w", what, r.ID, r.Status, ErrUnavailable)
	}
	return r, nil
}

// Void is what voiding an idempotency key found: Voided, and no charge
// will ever be made with the key; or the charge already made with it.
type Void struct {
	Voided bool    `json:"voided"`
	Charge *Charge `json:"charge,omitempty"`
}

// Void makes sure no charge is ever made with chargeKey, the idempotency
// key a charge was (or would be) asked with, or returns the charge made
// with it already (its caller refunds it). A charge with that key still in
// flight is ErrUnavailable: ask again once it is settled. This is how an
// order cancelled before its charge is never charged, even by an attempt
// whose answer was lost in a crash.
func (c *Client) Void(ctx context.Context, chargeKey string) (Void, error) {
	var v Void
	if _, err := c.call(ctx, "/v1/charges/void", "", map[string]string{"idempotency_key": chargeKey}, &v, http.StatusOK); err != nil {
		return Void{}, fmt.Errorf("void charge key %s: %w", chargeKey, err)
	}
	if !v.Voided && v.Charge == nil {
		return Void{}, fmt.Errorf("void charge key %s: %w: neither voided nor a charge", chargeKey, ErrMismatch)
	}
	return v, nil
}

// call POSTs body as JSON to path, with an Idempotency-Key when key is set,
// and decodes an answer whose status is one of ok into out. It returns the
// status, and an error wrapping ErrUnavailable for what is worth asking
// again (no answer, 5xx, 429, 409: the same key still in flight, 408, a
// garbled body) or ErrRejected for any other refusal.
func (c *Client) call(ctx context.Context, path, key string, body, out any, ok ...int) (int, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, fmt.Errorf("encode request: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(raw))
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	if key != "" {
		hreq.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("read answer: %w: %w", ErrUnavailable, err)
	}
	switch code := resp.StatusCode; {
	case slices.Contains(ok, code):
		if err := json.Unmarshal(answer, out); err != nil {
			// A garbled answer from a provider that did answer is most
			// likely a proxy's error page: try again.
			return code, fmt.Errorf("decode answer (status %d): %w: %w", code, ErrUnavailable, err)
		}
		return code, nil
	case code >= 500, code == http.StatusTooManyRequests, code == http.StatusConflict, code == http.StatusRequestTimeout:
		return code, fmt.Errorf("%w: provider answered %d: %s", ErrUnavailable, code, brief(answer))
	default:
		return code, fmt.Errorf("%w: provider answered %d: %s", ErrRejected, code, brief(answer))
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
