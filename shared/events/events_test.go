package events

import (
	"errors"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		give string
		ok   bool
	}{
		{"OK", `{"id":"e1","type":"order.placed","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":{}}`, true},
		{"ErrNotJSON", `nope`, false},
		{"ErrEmptyID", `{"type":"order.placed","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":{}}`, false},
		{"ErrNoType", `{"id":"e1","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":{}}`, false},
		{"ErrNoOrder", `{"id":"e1","type":"t","occurred_at":"2026-01-02T03:04:05Z","data":{}}`, false},
		{"ErrNoTime", `{"id":"e1","type":"t","order_id":"o1","data":{}}`, false},
		{"ErrDataNotObject", `{"id":"e1","type":"t","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":[1]}`, false},
		{"ErrTrailing", `{"id":"e1","type":"t","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":{}} {}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.give))
			if tt.ok && err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestNewRoundTrip(t *testing.T) {
	e, err := New("e1", OrderPaid, "o1", time.Now(), Paid{ChargeID: "c1", AmountCents: 500})
	if err != nil {
		t.Fatal(err)
	}
	var p Paid
	if err := DecodeData(e, &p); err != nil {
		t.Fatal(err)
	}
	if p.ChargeID != "c1" || p.AmountCents != 500 {
		t.Fatalf("round trip = %+v", p)
	}
}

// FuzzDecode checks that no input makes the envelope decoder panic and that
// every rejection is an ErrMalformed.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":"e1","type":"order.placed","occurred_at":"2026-01-02T03:04:05Z","order_id":"o1","data":{}}`))
	f.Add([]byte(`{"id":1}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"data":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if _, err := Decode(body); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v does not wrap ErrMalformed", err)
		}
	})
}
