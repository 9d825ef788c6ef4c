package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCharge(t *testing.T) {
	fake := NewFake(FakeConfig{DeclineAmountCents: 666})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client())
	ctx := context.Background()

	t.Run("OKIdempotent", func(t *testing.T) {
		a, err := c.Charge(ctx, ChargeRequest{OrderID: "o1", AmountCents: 900, Currency: "INR"}, "o1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Charge(ctx, ChargeRequest{OrderID: "o1", AmountCents: 900, Currency: "INR"}, "o1")
		if err != nil || a.ID != b.ID || a.Status != "succeeded" {
			t.Fatalf("first %+v, again %+v (%v)", a, b, err)
		}
		if n := countCharges(t, fake, "o1"); n != 1 {
			t.Fatalf("%d charges recorded, want 1", n)
		}
	})
	t.Run("ErrDeclined", func(t *testing.T) {
		_, err := c.Charge(ctx, ChargeRequest{OrderID: "o2", AmountCents: 666}, "o2")
		if !errors.Is(err, ErrDeclined) {
			t.Fatalf("err = %v, want ErrDeclined", err)
		}
	})
	t.Run("ErrKeyReused", func(t *testing.T) {
		_, _ = c.Charge(ctx, ChargeRequest{OrderID: "o3", AmountCents: 1}, "k3")
		_, err := c.Charge(ctx, ChargeRequest{OrderID: "o3", AmountCents: 2}, "k3")
		if err == nil || !strings.Contains(err.Error(), "422") {
			t.Fatalf("err = %v, want a 422", err)
		}
	})
	t.Run("ErrInjectedFailureChargesNothing", func(t *testing.T) {
		f := NewFake(FakeConfig{FailRate: 1})
		s := httptest.NewServer(f)
		defer s.Close()
		_, err := NewClient(s.URL, s.Client()).Charge(ctx, ChargeRequest{OrderID: "o4", AmountCents: 1}, "o4")
		if err == nil || errors.Is(err, ErrDeclined) || !strings.Contains(err.Error(), "503") {
			t.Fatalf("err = %v, want a transient 503", err)
		}
		if n := countCharges(t, f, "o4"); n != 0 {
			t.Fatalf("a failed request charged %d times", n)
		}
	})
	t.Run("ErrTimeout", func(t *testing.T) {
		f := NewFake(FakeConfig{Latency: time.Second})
		s := httptest.NewServer(f)
		defer s.Close()
		tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := NewClient(s.URL, s.Client()).Charge(tctx, ChargeRequest{OrderID: "o5", AmountCents: 1}, "o5"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline error", err)
		}
	})
	t.Run("ErrNoKey", func(t *testing.T) {
		resp, err := http.Post(srv.URL+"/v1/charges", "application/json", strings.NewReader(`{"order_id":"o","amount_cents":1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("status %d, want 400", resp.StatusCode)
		}
	})
}

func countCharges(t *testing.T, f *Fake, order string) int {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.charges {
		if c.OrderID == order {
			n++
		}
	}
	return n
}
