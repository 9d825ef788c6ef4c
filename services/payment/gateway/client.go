// Package gateway speaks to the payment provider: Client charges cards, and
// Fake is a provider of our own with the same HTTP protocol, for local runs
// and tests (configurable latency, failure rate and declines).
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// ErrDeclined means the provider refused the charge: a business outcome, not
// a fault, so retrying will not help.
var ErrDeclined = errors.New("charge declined")

// ChargeRequest asks for an order's amount to be charged.
type ChargeRequest struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// Charge is the provider's record of a charge.
type Charge struct {
	ID             string `json:"id"`
	OrderID        string `json:"order_id"`
	AmountCents    int64  `json:"amount_cents"`
	Currency       string `json:"currency"`
	Status         string `json:"status"` // "succeeded" or "declined"
	IdempotencyKey string `json:"idempotency_key"`
}

// Client calls the provider's HTTP API.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the provider at baseURL.
func NewClient(baseURL string, httpClient *http.Client) *Client {
	return &Client{base: baseURL, http: httpClient}
}

// Charge charges once per idempotency key: asking again with the same key
// returns the first charge. A declined charge returns the charge and
// ErrDeclined; any other error is transient.
func (c *Client) Charge(ctx context.Context, req ChargeRequest, idempotencyKey string) (Charge, error) {
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/charges", bytes.NewReader(body))
	if err != nil {
		return Charge{}, fmt.Errorf("build charge request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Idempotency-Key", idempotencyKey)
	resp, err := c.http.Do(hreq)
	if err != nil {
		return Charge{}, fmt.Errorf("charge: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Charge{}, fmt.Errorf("read charge response: %w", err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return Charge{}, fmt.Errorf("charge: provider answered %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	var ch Charge
	if err := json.Unmarshal(raw, &ch); err != nil {
		return Charge{}, fmt.Errorf("decode charge: %w", err)
	}
	if ch.Status == "declined" {
		return ch, ErrDeclined
	}
	return ch, nil
}
