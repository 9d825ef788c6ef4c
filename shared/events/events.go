// Package events is Dabba's shared vocabulary: the event envelope, the payload
// of each event type and the routing keys they travel under. It imports
// nothing of ours, so every service can depend on it.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Routing keys of the events published to the "orders" exchange. The routing
// key is also the envelope's Type and the AMQP "type" property.
const (
	OrderPlaced        = "order.placed"
	OrderPaid          = "order.paid"
	OrderPaymentFailed = "order.payment_failed"
	OrderAccepted      = "order.accepted"
	OrderPickedUp      = "order.picked_up"
	OrderDelivered     = "order.delivered"
	OrderCancelled     = "order.cancelled"
	OrderRiderAssigned = "order.rider_assigned"
	// OrderRefunded follows order.cancelled when the order had been
	// charged: the payment service refunded it. It is no status: a
	// refunded order stays cancelled.
	OrderRefunded = "order.refunded"
	// OrderRiderNear: the order's rider, carrying it, first came within
	// tracking's TRACKING_NEAR_METERS of the delivery address.
	OrderRiderNear = "order.rider_near"
	// OrderRiderArriving: the order's rider first came within the same
	// distance of the restaurant, before picking the order up.
	OrderRiderArriving = "order.rider_arriving"
)

// RoutingKeys lists every routing key published to the "orders" exchange; a
// test checks that each one is bound to at least one queue.
var RoutingKeys = []string{
	OrderPlaced, OrderPaid, OrderPaymentFailed, OrderAccepted,
	OrderPickedUp, OrderDelivered, OrderCancelled, OrderRiderAssigned,
	OrderRefunded,
	OrderRiderNear, OrderRiderArriving,
}

// Order statuses, in the order an order normally lives through them.
const (
	StatusPlaced        = "placed"
	StatusPaid          = "paid"
	StatusPaymentFailed = "payment_failed"
	StatusAccepted      = "accepted"
	StatusPickedUp      = "picked_up"
	StatusDelivered     = "delivered"
	StatusCancelled     = "cancelled"
)

// StatusEvent maps a status to the routing key announcing it.
var StatusEvent = map[string]string{
	StatusPlaced:        OrderPlaced,
	StatusPaid:          OrderPaid,
	StatusPaymentFailed: OrderPaymentFailed,
	StatusAccepted:      OrderAccepted,
	StatusPickedUp:      OrderPickedUp,
	StatusDelivered:     OrderDelivered,
	StatusCancelled:     OrderCancelled,
}

// Envelope wraps every event. ID doubles as the AMQP message_id, which is what
// consumers record in their inbox to make redeliveries harmless.
type Envelope struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	OccurredAt time.Time       `json:"occurred_at"`
	OrderID    string          `json:"order_id"`
	Data       json.RawMessage `json:"data"`
}

// Item is one line of an order.
type Item struct {
	SKU            string `json:"sku"`
	Name           string `json:"name"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents"`
}

// Address is where an order is delivered.
type Address struct {
	Line1 string  `json:"line1"`
	Lat   float64 `json:"lat"`
	Lng   float64 `json:"lng"`
}

// Placed is the payload of order.placed.
type Placed struct {
	CustomerID      string  `json:"customer_id"`
	RestaurantID    string  `json:"restaurant_id"`
	Email           string  `json:"email"`
	Items           []Item  `json:"items"`
	TotalCents      int64   `json:"total_cents"`
	DeliveryAddress Address `json:"delivery_address"`
}

// Paid is the payload of order.paid. It repeats the order's restaurant and
// e-mail so the restaurant and e-mail consumers need nothing but the event.
type Paid struct {
	ChargeID     string `json:"charge_id"`
	AmountCents  int64  `json:"amount_cents"`
	RestaurantID string `json:"restaurant_id,omitempty"`
	Email        string `json:"email,omitempty"`
}

// PaymentFailed is the payload of order.payment_failed, with the same
// repeated fields as Paid.
type PaymentFailed struct {
	Reason       string `json:"reason"`
	RestaurantID string `json:"restaurant_id,omitempty"`
	Email        string `json:"email,omitempty"`
}

// StatusChanged is the payload of the events a status move publishes
// (order.accepted, order.picked_up, order.delivered, order.cancelled). It
// carries enough of the order for consumers that never saw order.placed
// (restaurant, email) to act on it.
type StatusChanged struct {
	Status       string `json:"status"`
	From         string `json:"from"`
	RestaurantID string `json:"restaurant_id"`
	Email        string `json:"email"`
}

// Refunded is the payload of order.refunded, with the same repeated fields
// as Paid.
type Refunded struct {
	RefundID     string `json:"refund_id"`
	ChargeID     string `json:"charge_id"`
	AmountCents  int64  `json:"amount_cents"`
	RestaurantID string `json:"restaurant_id,omitempty"`
	Email        string `json:"email,omitempty"`
}

// RiderAssigned is the payload of order.rider_assigned.
type RiderAssigned struct {
	RiderID string `json:"rider_id"`
}

// RiderNear is the payload of order.rider_near, published once per order.
// It repeats the order's e-mail and restaurant, so their consumers need
// nothing but the event.
type RiderNear struct {
	RiderID      string  `json:"rider_id"`
	DistanceM    float64 `json:"distance_m"` // from the delivery address, at the fix that came near
	Lat          float64 `json:"lat"`        // that fix
	Lng          float64 `json:"lng"`
	Email        string  `json:"email,omitempty"`
	RestaurantID string  `json:"restaurant_id,omitempty"`
}

// RiderArriving is the payload of order.rider_arriving, published once per
// order.
type RiderArriving struct {
	RiderID      string  `json:"rider_id"`
	RestaurantID string  `json:"restaurant_id"`
	DistanceM    float64 `json:"distance_m"` // from the restaurant, at the fix that came near
}

// ErrMalformed marks an event that can never be processed, however often it
// is retried: consumers dead-letter it at once.
var ErrMalformed = errors.New("malformed event")

// Decode parses an envelope and checks the fields every consumer relies on.
// Every error wraps ErrMalformed.
func Decode(body []byte) (Envelope, error) {
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&e); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Envelope{}, fmt.Errorf("%w: trailing data after the envelope", ErrMalformed)
	}
	switch {
	case e.ID == "":
		return Envelope{}, fmt.Errorf("%w: id is empty", ErrMalformed)
	case e.Type == "":
		return Envelope{}, fmt.Errorf("%w: type is empty", ErrMalformed)
	case e.OrderID == "":
		return Envelope{}, fmt.Errorf("%w: order_id is empty", ErrMalformed)
	case e.OccurredAt.IsZero():
		return Envelope{}, fmt.Errorf("%w: occurred_at is missing", ErrMalformed)
	case len(e.Data) == 0 || e.Data[0] != '{':
		return Envelope{}, fmt.Errorf("%w: data is not an object", ErrMalformed)
	}
	return e, nil
}

// DecodeData parses the envelope's payload into v, rejecting unknown shapes.
// Errors wrap ErrMalformed.
func DecodeData(e Envelope, v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrMalformed, e.Type, err)
	}
	return nil
}

// NewID returns a new id for an order or an event: a UUIDv7, whose first
// bits are the time it was made. Every table keys rows on these ids, and
// with random ids each insert lands on a random page of each index, so the
// whole index must stay in memory or be read back for it; time-ordered ids
// go to the index's right edge, the pages just written. They stay
// unguessable: 74 bits are random.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// ShortID is how an id is shown to people (an e-mail's subject, the
// tracking page): its last 8 characters. The first 8 of a time-ordered id
// are the time, the same for every order placed within a minute or so; the
// last are random.
func ShortID(id string) string { return id[max(0, len(id)-8):] }

// New builds an envelope around data; id must be unique (NewID). The time
// keeps PostgreSQL's precision (microseconds), so an event's time equals
// the time its writer stored with the change it announces, and a reader
// comparing the two sees the same instant.
func New(id, typ, orderID string, at time.Time, data any) (Envelope, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s data: %w", typ, err)
	}
	return Envelope{ID: id, Type: typ, OccurredAt: at.UTC().Truncate(time.Microsecond), OrderID: orderID, Data: raw}, nil
}
