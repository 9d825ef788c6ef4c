package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"net/mail"
	"strings"
	"time"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/httpx"
)

// Limits on an order request; past them the request is refused, not trimmed.
const (
	maxBodyBytes  = 1 << 20 // 1 MiB
	maxItems      = 100
	maxQuantity   = 1000
	maxPriceCents = 10_000_000 // 100,000.00 per unit
	maxIDLen      = 128
	maxTextLen    = 500
)

// placeRequest is the body of POST /v1/orders. Numbers are pointers so that a
// missing field is told apart from a zero.
type placeRequest struct {
	CustomerID      string         `json:"customer_id"`
	RestaurantID    string         `json:"restaurant_id"`
	Email           string         `json:"email"`
	Items           []itemRequest  `json:"items"`
	DeliveryAddress addressRequest `json:"delivery_address"`
}

type itemRequest struct {
	SKU            string `json:"sku"`
	Name           string `json:"name"`
	Quantity       *int   `json:"quantity"`
	UnitPriceCents *int64 `json:"unit_price_cents"`
}

type addressRequest struct {
	Line1 string   `json:"line1"`
	Lat   *float64 `json:"lat"`
	Lng   *float64 `json:"lng"`
}

// validate checks the request and returns the order's items, address and
// total, or a 400 problem naming the first field at fault.
func (r placeRequest) validate() ([]events.Item, events.Address, int64, error) {
	var none events.Address
	if err := checkText("customer_id", r.CustomerID, maxIDLen); err != nil {
		return nil, none, 0, err
	}
	if err := checkText("restaurant_id", r.RestaurantID, maxIDLen); err != nil {
		return nil, none, 0, err
	}
	if err := checkText("email", r.Email, 254); err != nil {
		return nil, none, 0, err
	}
	if a, err := mail.ParseAddress(r.Email); err != nil || a.Address != r.Email {
		return nil, none, 0, httpx.FieldProblem("email", "must be a plain e-mail address")
	}
	if len(r.Items) == 0 {
		return nil, none, 0, httpx.FieldProblem("items", "must hold at least one item")
	}
	if len(r.Items) > maxItems {
		return nil, none, 0, httpx.FieldProblem("items", fmt.Sprintf("must hold at most %d items", maxItems))
	}
	items := make([]events.Item, len(r.Items))
	var total int64
	for i, it := range r.Items {
		field := func(name string) string { return fmt.Sprintf("items[%d].%s", i, name) }
		if err := checkText(field("sku"), it.SKU, maxIDLen); err != nil {
			return nil, none, 0, err
		}
		if err := checkText(field("name"), it.Name, maxTextLen); err != nil {
			return nil, none, 0, err
		}
		switch {
		case it.Quantity == nil:
			return nil, none, 0, httpx.FieldProblem(field("quantity"), "is required")
		case *it.Quantity < 1 || *it.Quantity > maxQuantity:
			return nil, none, 0, httpx.FieldProblem(field("quantity"), fmt.Sprintf("must be between 1 and %d", maxQuantity))
		case it.UnitPriceCents == nil:
			return nil, none, 0, httpx.FieldProblem(field("unit_price_cents"), "is required")
		case *it.UnitPriceCents < 0 || *it.UnitPriceCents > maxPriceCents:
			return nil, none, 0, httpx.FieldProblem(field("unit_price_cents"), fmt.Sprintf("must be between 0 and %d", maxPriceCents))
		}
		items[i] = events.Item{SKU: it.SKU, Name: it.Name, Quantity: *it.Quantity, UnitPriceCents: *it.UnitPriceCents}
		total += int64(*it.Quantity) * *it.UnitPriceCents // bounded: 100 × 1000 × 1e7 < 2^63
	}
	a := r.DeliveryAddress
	if err := checkText("delivery_address.line1", a.Line1, maxTextLen); err != nil {
		return nil, none, 0, err
	}
	if err := checkCoord("delivery_address.lat", a.Lat, 90); err != nil {
		return nil, none, 0, err
	}
	if err := checkCoord("delivery_address.lng", a.Lng, 180); err != nil {
		return nil, none, 0, err
	}
	return items, events.Address{Line1: a.Line1, Lat: *a.Lat, Lng: *a.Lng}, total, nil
}

func checkText(field, v string, max int) error {
	switch {
	case v == "":
		return httpx.FieldProblem(field, "is required")
	case len(v) > max:
		return httpx.FieldProblem(field, fmt.Sprintf("must be at most %d bytes", max))
	case strings.ContainsRune(v, 0):
		// PostgreSQL text cannot hold NUL.
		return httpx.FieldProblem(field, "must not contain NUL characters")
	}
	return nil
}

func checkCoord(field string, v *float64, limit float64) error {
	switch {
	case v == nil:
		return httpx.FieldProblem(field, "is required")
	case math.IsNaN(*v) || *v < -limit || *v > limit:
		return httpx.FieldProblem(field, fmt.Sprintf("must be between %g and %g", -limit, limit))
	}
	return nil
}

// fingerprint identifies a request's content for the Idempotency-Key check.
// It hashes the decoded request, so the same order sent with other
// whitespace or key order still counts as the same request.
func (r placeRequest) fingerprint() []byte {
	b, _ := json.Marshal(r) // cannot fail: plain fields only
	sum := sha256.Sum256(b)
	return sum[:]
}

// Order is an order as the API shows it.
type Order struct {
	ID              string         `json:"id"`
	Status          string         `json:"status"`
	CustomerID      string         `json:"customer_id"`
	RestaurantID    string         `json:"restaurant_id"`
	Email           string         `json:"email"`
	Items           []events.Item  `json:"items"`
	DeliveryAddress events.Address `json:"delivery_address"`
	TotalCents      int64          `json:"total_cents"`
	RiderID         string         `json:"rider_id,omitempty"`
	CreatedAt       time.Time      `json:"created_at"`
	UpdatedAt       time.Time      `json:"updated_at"`
	TrackingToken   string         `json:"tracking_token,omitempty"`
	History         []StatusChange `json:"history,omitempty"`
}

// StatusChange is one step of an order's history.
type StatusChange struct {
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

// moves lists every legal status change. placed → paid | payment_failed is
// made only by the payment service's events; the rest by the API.
var moves = map[string][]string{
	events.StatusPlaced:   {events.StatusPaid, events.StatusPaymentFailed, events.StatusCancelled},
	events.StatusPaid:     {events.StatusAccepted, events.StatusCancelled},
	events.StatusAccepted: {events.StatusPickedUp, events.StatusCancelled},
	events.StatusPickedUp: {events.StatusDelivered},
}

// apiMoves are the statuses a client may ask for on POST /v1/orders/{id}/status.
var apiMoves = map[string]bool{
	events.StatusAccepted: true, events.StatusPickedUp: true, events.StatusDelivered: true, events.StatusCancelled: true,
}

// canMove reports whether an order may go from one status to another. Since
// every legal move goes forward, refusing the others also means a status
// never goes backwards when events arrive out of order.
func canMove(from, to string) bool {
	for _, s := range moves[from] {
		if s == to {
			return true
		}
	}
	return false
}
