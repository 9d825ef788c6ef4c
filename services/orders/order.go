package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
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

// itemRequest is a line as a client asks for it: a sku and a quantity. The
// menu prices it; a unit price sent along is the one the customer was shown,
// which the menu's must still be. A name is the client's business (the
// menu's is the order's).
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

// line is one line of an order, checked, waiting to be priced.
type line struct {
	SKU      string
	Quantity int
	// Shown is the unit price the customer was shown, when the app sent
	// it.
	Shown *int64
}

// validate checks the request and returns the order's lines and address,
// or a 400 problem naming the first field at fault.
func (r placeRequest) validate() ([]line, events.Address, error) {
	var none events.Address
	if err := checkText("customer_id", r.CustomerID, maxIDLen); err != nil {
		return nil, none, err
	}
	if err := checkText("restaurant_id", r.RestaurantID, maxIDLen); err != nil {
		return nil, none, err
	}
	if err := checkText("email", r.Email, 254); err != nil {
		return nil, none, err
	}
	if a, err := mail.ParseAddress(r.Email); err != nil || a.Address != r.Email {
		return nil, none, httpx.FieldProblem("email", "must be a plain e-mail address")
	}
	if len(r.Items) == 0 {
		return nil, none, httpx.FieldProblem("items", "must hold at least one item")
	}
	if len(r.Items) > maxItems {
		return nil, none, httpx.FieldProblem("items", fmt.Sprintf("must hold at most %d items", maxItems))
	}
	lines := make([]line, len(r.Items))
	for i, it := range r.Items {
		field := func(name string) string { return fmt.Sprintf("items[%d].%s", i, name) }
		if err := checkText(field("sku"), it.SKU, maxIDLen); err != nil {
			return nil, none, err
		}
		if it.Name != "" {
			if err := checkText(field("name"), it.Name, maxTextLen); err != nil {
				return nil, none, err
			}
		}
		switch {
		case it.Quantity == nil:
			return nil, none, httpx.FieldProblem(field("quantity"), "is required")
		case *it.Quantity < 1 || *it.Quantity > maxQuantity:
			return nil, none, httpx.FieldProblem(field("quantity"), fmt.Sprintf("must be between 1 and %d", maxQuantity))
		case it.UnitPriceCents != nil && (*it.UnitPriceCents < 0 || *it.UnitPriceCents > maxPriceCents):
			return nil, none, httpx.FieldProblem(field("unit_price_cents"), fmt.Sprintf("must be between 0 and %d", maxPriceCents))
		}
		lines[i] = line{SKU: it.SKU, Quantity: *it.Quantity, Shown: it.UnitPriceCents}
	}
	a := r.DeliveryAddress
	if err := checkText("delivery_address.line1", a.Line1, maxTextLen); err != nil {
		return nil, none, err
	}
	if err := checkCoord("delivery_address.lat", a.Lat, 90); err != nil {
		return nil, none, err
	}
	if err := checkCoord("delivery_address.lng", a.Lng, 180); err != nil {
		return nil, none, err
	}
	return lines, events.Address{Line1: a.Line1, Lat: *a.Lat, Lng: *a.Lng}, nil
}

// menuItem is what the menu says of a line's sku; Listed is false when the
// sku is not on the restaurant's menu.
type menuItem struct {
	Listed     bool
	Name       string
	PriceCents int64
	Available  bool
}

// Why a line cannot be priced.
const (
	lineUnlisted     = "is not on the restaurant's menu"
	lineUnavailable  = "is not available now"
	linePriceChanged = "price changed"
)

// LineError is a line the menu does not price as asked: its sku is not on
// the menu or not available now (422), or the menu's price is not the one
// the customer was shown (409: the app shows the new price and asks again).
type LineError struct {
	Index  int
	SKU    string
	Reason string // one of the line… constants
	// MenuPriceCents is the menu's price, for a price that changed.
	MenuPriceCents int64
}

func (e *LineError) Error() string {
	if e.Reason == linePriceChanged {
		return fmt.Sprintf("price changed: %s costs %d now", e.SKU, e.MenuPriceCents)
	}
	return fmt.Sprintf("%s %s", e.SKU, e.Reason)
}

// Field names the request field at fault.
func (e *LineError) Field() string {
	if e.Reason == linePriceChanged {
		return fmt.Sprintf("items[%d].unit_price_cents", e.Index)
	}
	return fmt.Sprintf("items[%d].sku", e.Index)
}

// ErrZeroTotal refuses an order the menu prices at nothing (free items
// only): a charge of zero is no charge, and nothing would pay for the
// delivery. Refused at the API, so no order waits for a payment that can
// never come.
var ErrZeroTotal = errors.New("the order's total is zero: an order must cost something")

// price prices lines from menu (menu[i] is what the menu says of lines[i])
// and returns the order's items and total.
func price(lines []line, menu []menuItem) ([]events.Item, int64, error) {
	items := make([]events.Item, len(lines))
	var total int64
	for i, l := range lines {
		m := menu[i]
		switch {
		case !m.Listed:
			return nil, 0, &LineError{Index: i, SKU: l.SKU, Reason: lineUnlisted}
		case !m.Available:
			return nil, 0, &LineError{Index: i, SKU: l.SKU, Reason: lineUnavailable}
		case l.Shown != nil && *l.Shown != m.PriceCents:
			return nil, 0, &LineError{Index: i, SKU: l.SKU, Reason: linePriceChanged, MenuPriceCents: m.PriceCents}
		}
		items[i] = events.Item{SKU: l.SKU, Name: m.Name, Quantity: l.Quantity, UnitPriceCents: m.PriceCents}
		total += int64(l.Quantity) * m.PriceCents // bounded: 100 × 1000 × 1e7 < 2^63
	}
	if total == 0 {
		return nil, 0, ErrZeroTotal
	}
	return items, total, nil
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
// whitespace or key order still counts as the same request. (Its fields
// have no omitempty: a request's hash must not change with a release while
// its key is remembered.)
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
