package main

import (
	"errors"
	"testing"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/httpx"
)

func ptr[T any](v T) *T { return &v }

func validRequest() placeRequest {
	return placeRequest{
		CustomerID: "c1", RestaurantID: "r1", Email: "a@example.com",
		Items:           []itemRequest{{SKU: "s1", Name: "Biryani", Quantity: ptr(2), UnitPriceCents: ptr(int64(450))}},
		DeliveryAddress: addressRequest{Line1: "1 Road", Lat: ptr(17.4), Lng: ptr(78.4)},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name      string
		give      func(*placeRequest)
		wantField string
	}{
		{"OK", func(*placeRequest) {}, ""},
		{"ErrNoCustomer", func(r *placeRequest) { r.CustomerID = "" }, "customer_id"},
		{"ErrBadEmail", func(r *placeRequest) { r.Email = "not an email" }, "email"},
		{"ErrEmailWithName", func(r *placeRequest) { r.Email = "Bob <b@example.com>" }, "email"},
		{"ErrEmptyItems", func(r *placeRequest) { r.Items = nil }, "items"},
		{"ErrTooManyItems", func(r *placeRequest) { r.Items = make([]itemRequest, maxItems+1) }, "items"},
		{"ErrMissingQuantity", func(r *placeRequest) { r.Items[0].Quantity = nil }, "items[0].quantity"},
		{"ErrZeroQuantity", func(r *placeRequest) { r.Items[0].Quantity = ptr(0) }, "items[0].quantity"},
		{"ErrNegativeQuantity", func(r *placeRequest) { r.Items[0].Quantity = ptr(-1) }, "items[0].quantity"},
		{"ErrMissingPrice", func(r *placeRequest) { r.Items[0].UnitPriceCents = nil }, "items[0].unit_price_cents"},
		{"ErrNegativePrice", func(r *placeRequest) { r.Items[0].UnitPriceCents = ptr(int64(-5)) }, "items[0].unit_price_cents"},
		{"ErrNoSKU", func(r *placeRequest) { r.Items[0].SKU = "" }, "items[0].sku"},
		{"ErrNoLine1", func(r *placeRequest) { r.DeliveryAddress.Line1 = "" }, "delivery_address.line1"},
		{"ErrLatMissing", func(r *placeRequest) { r.DeliveryAddress.Lat = nil }, "delivery_address.lat"},
		{"ErrLatRange", func(r *placeRequest) { r.DeliveryAddress.Lat = ptr(91.0) }, "delivery_address.lat"},
		{"ErrLngRange", func(r *placeRequest) { r.DeliveryAddress.Lng = ptr(-180.5) }, "delivery_address.lng"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest()
			tt.give(&r)
			_, _, total, err := r.validate()
			if tt.wantField == "" {
				if err != nil || total != 900 {
					t.Fatalf("validate = %d, %v; want 900, nil", total, err)
				}
				return
			}
			var p *httpx.Problem
			if !errors.As(err, &p) || p.Field != tt.wantField || p.Status != 400 {
				t.Fatalf("validate error = %v, want a 400 problem on %s", err, tt.wantField)
			}
		})
	}
}

func TestCanMove(t *testing.T) {
	tests := []struct {
		from, to string
		want     bool
	}{
		{events.StatusPlaced, events.StatusPaid, true},
		{events.StatusPlaced, events.StatusAccepted, false},
		{events.StatusPaid, events.StatusAccepted, true},
		{events.StatusAccepted, events.StatusPickedUp, true},
		{events.StatusPickedUp, events.StatusDelivered, true},
		{events.StatusPickedUp, events.StatusCancelled, false},
		{events.StatusDelivered, events.StatusCancelled, false},
		{events.StatusCancelled, events.StatusPaid, false},
		{events.StatusAccepted, events.StatusPaid, false}, // never backwards
		{events.StatusPaymentFailed, events.StatusPaid, false},
	}
	for _, tt := range tests {
		if got := canMove(tt.from, tt.to); got != tt.want {
			t.Errorf("canMove(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}

func TestFingerprintIgnoresFormatting(t *testing.T) {
	a, b := validRequest(), validRequest()
	if string(a.fingerprint()) != string(b.fingerprint()) {
		t.Fatal("equal requests hash differently")
	}
	b.Items[0].Quantity = ptr(3)
	if string(a.fingerprint()) == string(b.fingerprint()) {
		t.Fatal("different requests hash the same")
	}
}

// FuzzPlaceRequest feeds arbitrary bodies through the order decoder and
// validation: no panic, and every rejection is a 400 problem.
func FuzzPlaceRequest(f *testing.F) {
	f.Add([]byte(`{"customer_id":"c","restaurant_id":"r","email":"a@b.co","items":[{"sku":"s","name":"n","quantity":1,"unit_price_cents":1}],"delivery_address":{"line1":"l","lat":1,"lng":1}}`))
	f.Add([]byte(`{"items":[{"quantity":-1}]}`))
	f.Add([]byte(`{"delivery_address":{"lat":1e400}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"customer_id":"\u0000"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var r placeRequest
		err := httpx.DecodeJSON(body, &r)
		if err == nil {
			_, _, total, verr := r.validate()
			if verr == nil && total < 0 {
				t.Fatalf("accepted a negative total %d", total)
			}
			err = verr
		}
		var p *httpx.Problem
		if err != nil && (!errors.As(err, &p) || p.Status != 400) {
			t.Fatalf("rejection %v is not a 400 problem", err)
		}
	})
}
