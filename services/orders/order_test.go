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
		{"OKNoPriceNoName", func(r *placeRequest) { r.Items[0].UnitPriceCents, r.Items[0].Name = nil, "" }, ""},
		{"ErrNegativePrice", func(r *placeRequest) { r.Items[0].UnitPriceCents = ptr(int64(-5)) }, "items[0].unit_price_cents"},
		{"ErrNameNUL", func(r *placeRequest) { r.Items[0].Name = "a\x00" }, "items[0].name"},
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
			lines, _, err := r.validate()
			if tt.wantField == "" {
				if err != nil || len(lines) != 1 || lines[0].SKU != "s1" || lines[0].Quantity != 2 {
					t.Fatalf("validate = %+v, %v", lines, err)
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

func TestPrice(t *testing.T) {
	thali := menuItem{Listed: true, Name: "Veg thali", PriceCents: 25000, Available: true}
	tests := []struct {
		name      string
		lines     []line
		menu      []menuItem
		wantTotal int64
		wantErr   string // a LineError's reason, or ErrZeroTotal's text
	}{
		{"OK", []line{{SKU: "thali", Quantity: 2}}, []menuItem{thali}, 50000, ""},
		{"OKShownPrice", []line{{SKU: "thali", Quantity: 1, Shown: ptr(int64(25000))}}, []menuItem{thali}, 25000, ""},
		{"ErrPriceChanged", []line{{SKU: "thali", Quantity: 1, Shown: ptr(int64(20000))}}, []menuItem{thali}, 0, linePriceChanged},
		{"ErrUnlisted", []line{{SKU: "thali", Quantity: 1}, {SKU: "pizza", Quantity: 1}}, []menuItem{thali, {}}, 0, lineUnlisted},
		{"ErrUnavailable", []line{{SKU: "thali", Quantity: 1}}, []menuItem{{Listed: true, PriceCents: 1}}, 0, lineUnavailable},
		{"ErrZeroTotal", []line{{SKU: "water", Quantity: 3}}, []menuItem{{Listed: true, Name: "Water", Available: true}}, 0, ErrZeroTotal.Error()},
		{"OKFreeItemInPaidOrder", []line{{SKU: "water", Quantity: 3}, {SKU: "thali", Quantity: 1}},
			[]menuItem{{Listed: true, Name: "Water", Available: true}, thali}, 25000, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			items, total, err := price(tt.lines, tt.menu)
			if tt.wantErr == "" {
				if err != nil || total != tt.wantTotal || len(items) != len(tt.lines) || items[len(items)-1].Name != tt.menu[len(items)-1].Name {
					t.Fatalf("price = %+v, %d, %v; want total %d", items, total, err, tt.wantTotal)
				}
				return
			}
			var le *LineError
			switch {
			case errors.As(err, &le):
				if le.Reason != tt.wantErr || le.Index != len(tt.lines)-1 {
					t.Fatalf("price error %+v, want %q on the last line", le, tt.wantErr)
				}
			case err == nil || err.Error() != tt.wantErr:
				t.Fatalf("price error %v, want %q", err, tt.wantErr)
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
			lines, _, verr := r.validate()
			for _, l := range lines {
				if l.Quantity < 1 || (l.Shown != nil && *l.Shown < 0) {
					t.Fatalf("accepted a line %+v", l)
				}
			}
			err = verr
		}
		var p *httpx.Problem
		if err != nil && (!errors.As(err, &p) || p.Status != 400) {
			t.Fatalf("rejection %v is not a 400 problem", err)
		}
	})
}
