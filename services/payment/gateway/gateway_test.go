package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// MustFake serves a fake provider for the test and returns it with a client.
func MustFake(tb testing.TB, cfg FakeConfig) (*Fake, *Client, string) {
	tb.Helper()
	f := NewFake(cfg)
	srv := httptest.NewServer(f)
	tb.Cleanup(srv.Close)
	return f, NewClient(srv.URL, srv.Client()), srv.URL
}

func req(order string, cents int64) ChargeRequest {
	return ChargeRequest{OrderID: order, AmountCents: cents, Currency: "INR"}
}

func TestFakeValidatesRequests(t *testing.T) {
	t.Parallel()
	_, _, url := MustFake(t, FakeConfig{DeclineAmountCents: 666})
	tests := []struct {
		name string
		key  string
		give string
		want int
	}{
		{"OK", "k-ok", `{"order_id":"o1","amount_cents":900,"currency":"INR"}`, http.StatusCreated},
		{"Declined", "k-declined", `{"order_id":"o2","amount_cents":666,"currency":"INR"}`, http.StatusPaymentRequired},
		{"ErrMissingKey", "", `{"order_id":"o3","amount_cents":900,"currency":"INR"}`, http.StatusBadRequest},
		{"ErrBadJSON", "k-bad", `{"order_id":`, http.StatusBadRequest},
		{"ErrUnknownField", "k-unknown", `{"order_id":"o4","amount_cents":900,"currency":"INR","tip":1}`, http.StatusBadRequest},
		{"ErrTrailingData", "k-trailing", `{"order_id":"o5","amount_cents":900,"currency":"INR"} {}`, http.StatusBadRequest},
		{"ErrNoOrder", "k-noorder", `{"amount_cents":900,"currency":"INR"}`, http.StatusBadRequest},
		{"ErrZeroAmount", "k-zero", `{"order_id":"o6","amount_cents":0,"currency":"INR"}`, http.StatusBadRequest},
		{"ErrBadCurrency", "k-cur", `{"order_id":"o7","amount_cents":900,"currency":"rupees"}`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, url+"/v1/charges", strings.NewReader(tt.give))
			if tt.key != "" {
				r.Header.Set("Idempotency-Key", tt.key)
			}
			if got, body := do(t, r); got != tt.want {
				t.Fatalf("status %d (%s), want %d", got, body, tt.want)
			}
		})
	}
}

func TestClientCharge(t *testing.T) {
	ctx := context.Background()

	t.Run("OKReplaySameKeyChargesOnce", func(t *testing.T) {
		t.Parallel()
		f, c, url := MustFake(t, FakeConfig{})
		a, err := c.Charge(ctx, req("o1", 900), "order-o1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Charge(ctx, req("o1", 900), "order-o1")
		if err != nil {
			t.Fatal(err)
		}
		if a.ID == "" || a.ID != b.ID || a.Status != StatusSucceeded || a.AmountCents != 900 {
			t.Fatalf("first %+v, replay %+v", a, b)
		}
		if got := listCharges(t, url, "o1"); len(got) != 1 || got[0].ID != a.ID {
			t.Fatalf("GET /v1/charges?order_id=o1 = %+v, want the one charge", got)
		}
		if s := f.Stats(); s.Charges != 1 || s.Replays != 1 || s.Requests != 2 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("ErrDeclined", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{DeclineAmountCents: 666})
		for i := 0; i < 2; i++ { // the replay of a decline is the same decline
			ch, err := c.Charge(ctx, req("o2", 666), "order-o2")
			if !errors.Is(err, ErrDeclined) || errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrDeclined only", err)
			}
			if ch.ID == "" || ch.Status != StatusDeclined {
				t.Fatalf("charge %+v, want the declined record", ch)
			}
		}
		if _, err := c.Charge(ctx, req("o3", 667), "order-o3"); err != nil {
			t.Fatalf("another amount: %v", err)
		}
		if n := len(f.Charges("o2")); n != 1 {
			t.Fatalf("%d records for o2, want 1", n)
		}
	})
	t.Run("ErrKeyReusedIsRejected", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{})
		if _, err := c.Charge(ctx, req("o4", 100), "k4"); err != nil {
			t.Fatal(err)
		}
		_, err := c.Charge(ctx, req("o4", 200), "k4")
		if !errors.Is(err, ErrRejected) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "422") {
			t.Fatalf("err = %v, want a 422 ErrRejected", err)
		}
		if n := len(f.Charges("o4")); n != 1 {
			t.Fatalf("%d charges, want 1", n)
		}
	})
	t.Run("ErrInjectedFailureChargesNothing", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{FailRate: 1})
		_, err := c.Charge(ctx, req("o5", 100), "order-o5")
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "503") {
			t.Fatalf("err = %v, want a transient 503", err)
		}
		if n := len(f.Charges("")); n != 0 {
			t.Fatalf("a failed request charged %d times", n)
		}
		f.SetFailRate(0)
		if _, err := c.Charge(ctx, req("o5", 100), "order-o5"); err != nil {
			t.Fatalf("after failures stop: %v", err)
		}
		if s := f.Stats(); s.InjectedFailures != 1 || s.Charges != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("ErrTimeoutThenRetryChargesOnce", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{Latency: time.Second})
		tctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		defer cancel()
		_, err := c.Charge(tctx, req("o6", 100), "order-o6")
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want a transient deadline error", err)
		}
		// The provider finishes the abandoned charge; retrying with the
		// same key (409 while it is in flight) must find it, not add one.
		ch := mustChargeEventually(t, c, req("o6", 100), "order-o6")
		if got := f.Charges("o6"); len(got) != 1 || got[0].ID != ch.ID {
			t.Fatalf("charges %+v, want exactly the one returned (%s)", got, ch.ID)
		}
	})
	t.Run("OKConcurrentSameKeyChargesOnce", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{Latency: 20 * time.Millisecond})
		ids := make([]string, 8)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Go(func() { ids[i] = mustChargeEventually(t, c, req("o7", 100), "order-o7").ID })
		}
		wg.Wait()
		for _, id := range ids {
			if id != ids[0] {
				t.Fatalf("ids %v, want one charge", ids)
			}
		}
		if n := len(f.Charges("o7")); n != 1 {
			t.Fatalf("%d charges, want 1", n)
		}
	})
	t.Run("ErrKeyInFlightIsTransient", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{Latency: time.Second})
		first := make(chan error, 1)
		go func() {
			_, err := c.Charge(ctx, req("o10", 100), "order-o10")
			first <- err
		}()
		for f.Stats().Requests == 0 { // wait until the first is being processed
			time.Sleep(5 * time.Millisecond)
		}
		_, err := c.Charge(ctx, req("o10", 100), "order-o10")
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "409") {
			t.Fatalf("err = %v, want a transient 409", err)
		}
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if s := f.Stats(); s.Conflicts != 1 || s.Charges != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("OKFlakyProviderEachOrderOnce", func(t *testing.T) {
		t.Parallel()
		f, c, _ := MustFake(t, FakeConfig{FailRate: 0.5, Rand: rand.NewPCG(1, 2)})
		const orders = 20
		for i := range orders {
			o := fmt.Sprintf("o8-%d", i)
			mustChargeEventually(t, c, req(o, 100), "order-"+o)
		}
		s := f.Stats()
		if s.Charges != orders || s.InjectedFailures == 0 || s.Requests != s.Charges+s.InjectedFailures {
			t.Fatalf("stats %+v, want %d charges and some injected failures", s, orders)
		}
		if n := len(f.Charges("")); n != orders {
			t.Fatalf("%d charges, want %d", n, orders)
		}
	})
	t.Run("ErrConnectionRefused", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		_, err := NewClient(url, nil).Charge(ctx, req("o9", 100), "order-o9")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
	})
}

func TestFakeAdminConfig(t *testing.T) {
	t.Parallel()
	f, c, url := MustFake(t, FakeConfig{})
	tests := []struct {
		name string
		give string
		want int
	}{
		{"OKFailAll", `{"fail_rate":1}`, http.StatusNoContent},
		{"OKLatencyOnlyKeepsFailRate", `{"latency_ms":5}`, http.StatusNoContent},
		{"ErrFailRateAboveOne", `{"fail_rate":1.5}`, http.StatusBadRequest},
		{"ErrNegativeLatency", `{"latency_ms":-1}`, http.StatusBadRequest},
		{"ErrUnknownField", `{"fail":1}`, http.StatusBadRequest},
		{"ErrBadJSON", `{`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest(http.MethodPut, url+"/v1/admin/config", strings.NewReader(tt.give))
		if got, body := do(t, r); got != tt.want {
			t.Fatalf("%s: status %d (%s), want %d", tt.name, got, body, tt.want)
		}
	}
	r, _ := http.NewRequest(http.MethodGet, url+"/v1/admin/config", nil)
	if _, body := do(t, r); !strings.Contains(body, `"fail_rate":1`) || !strings.Contains(body, `"latency_ms":5`) {
		t.Fatalf("config %s, want fail_rate 1 and latency_ms 5", body)
	}
	if _, err := c.Charge(context.Background(), req("o1", 100), "k1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with fail_rate 1: err = %v, want ErrUnavailable", err)
	}
	if s := f.Stats(); s.InjectedFailures != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// mustChargeEventually retries transient errors, as the payment consumer
// does, until the charge is made or the test has waited long enough.
func mustChargeEventually(tb testing.TB, c *Client, r ChargeRequest, key string) Charge {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ch, err := c.Charge(context.Background(), r, key)
		if err == nil {
			return ch
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			tb.Errorf("charge %s: %v", key, err) // Errorf: also called from goroutines
			return Charge{}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func do(tb testing.TB, r *http.Request) (int, string) {
	tb.Helper()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func listCharges(tb testing.TB, url, order string) []Charge {
	tb.Helper()
	r, _ := http.NewRequest(http.MethodGet, url+"/v1/charges?order_id="+order, nil)
	code, body := do(tb, r)
	var out []Charge
	if code != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil {
		tb.Fatalf("list: %d %s", code, body)
	}
	return out
}

func TestRefundsAndVoids(t *testing.T) {
	ctx := context.Background()
	f, c, url := MustFake(t, FakeConfig{DeclineAmountCents: 13})

	t.Run("RefundOncePerKeyAndPerCharge", func(t *testing.T) {
		ch, err := c.Charge(ctx, req("o1", 900), "o1")
		if err != nil {
			t.Fatal(err)
		}
		rr := RefundRequest{ChargeID: ch.ID, OrderID: "o1", AmountCents: 900, Currency: "INR"}
		a, err := c.Refund(ctx, rr, "refund-o1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Refund(ctx, rr, "refund-o1")
		if err != nil || a.ID == "" || b.ID != a.ID || a.Status != StatusSucceeded || a.AmountCents != 900 {
			t.Fatalf("refund %+v, again %+v (%v)", a, b, err)
		}
		if _, err := c.Refund(ctx, rr, "another-key"); !errors.Is(err, ErrRejected) {
			t.Fatalf("a second refund of one charge: %v, want ErrRejected", err)
		}
		if got := f.Refunds("o1"); len(got) != 1 {
			t.Fatalf("%d refunds of o1, want 1", len(got))
		}
		var listed []Refund
		if code, body := do(t, mustGet(t, url+"/v1/refunds?order_id=o1")); code != 200 || json.Unmarshal([]byte(body), &listed) != nil || len(listed) != 1 {
			t.Fatalf("GET /v1/refunds = %d %s", code, body)
		}
	})
	t.Run("ErrRefundDeclinedOrPartial", func(t *testing.T) {
		declined, _ := c.Charge(ctx, req("o2", 13), "o2")
		if _, err := c.Refund(ctx, RefundRequest{ChargeID: declined.ID, OrderID: "o2", AmountCents: 13, Currency: "INR"}, "refund-o2"); !errors.Is(err, ErrRejected) {
			t.Fatalf("refund of a declined charge: %v", err)
		}
		ch, _ := c.Charge(ctx, req("o3", 900), "o3")
		if _, err := c.Refund(ctx, RefundRequest{ChargeID: ch.ID, OrderID: "o3", AmountCents: 400, Currency: "INR"}, "refund-o3"); !errors.Is(err, ErrRejected) {
			t.Fatalf("a partial refund: %v", err)
		}
	})
	t.Run("VoidBeforeCharge", func(t *testing.T) {
		v, err := c.Void(ctx, "o4")
		if err != nil || !v.Voided || v.Charge != nil {
			t.Fatalf("void = %+v, %v", v, err)
		}
		if v, err := c.Void(ctx, "o4"); err != nil || !v.Voided {
			t.Fatalf("void again = %+v, %v", v, err)
		}
		if _, err := c.Charge(ctx, req("o4", 900), "o4"); !errors.Is(err, ErrVoided) {
			t.Fatalf("charge with a voided key: %v, want ErrVoided", err)
		}
		if n := len(f.Charges("o4")); n != 0 {
			t.Fatalf("%d charges with a voided key", n)
		}
	})
	t.Run("VoidAfterChargeReturnsIt", func(t *testing.T) {
		ch, _ := c.Charge(ctx, req("o5", 900), "o5")
		v, err := c.Void(ctx, "o5")
		if err != nil || v.Voided || v.Charge == nil || v.Charge.ID != ch.ID {
			t.Fatalf("void of a charged key = %+v, %v; want the charge %s", v, err, ch.ID)
		}
	})
}

func mustGet(t *testing.T, url string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestClientChecksTheAnswer: only an answer that says succeeded, for the
// order, amount and currency asked, is a charge.
func TestClientChecksTheAnswer(t *testing.T) {
	tests := []struct {
		name   string
		answer string
		want   error
	}{
		{"OK", `{"id":"ch_1","order_id":"o1","amount_cents":900,"currency":"INR","status":"succeeded"}`, nil},
		{"ErrOtherAmount", `{"id":"ch_1","order_id":"o1","amount_cents":901,"currency":"INR","status":"succeeded"}`, ErrMismatch},
		{"ErrOtherOrder", `{"id":"ch_1","order_id":"o2","amount_cents":900,"currency":"INR","status":"succeeded"}`, ErrMismatch},
		{"ErrOtherCurrency", `{"id":"ch_1","order_id":"o1","amount_cents":900,"currency":"USD","status":"succeeded"}`, ErrMismatch},
		{"ErrNotFinal", `{"id":"ch_1","order_id":"o1","amount_cents":900,"currency":"INR","status":"pending"}`, ErrUnavailable},
		{"ErrNoStatus", `{"id":"ch_1","order_id":"o1","amount_cents":900,"currency":"INR"}`, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, tt.answer)
			}))
			defer srv.Close()
			_, err := NewClient(srv.URL, srv.Client()).Charge(context.Background(), req("o1", 900), "o1")
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Charge = %v, want %v", err, tt.want)
			}
		})
	}
}
