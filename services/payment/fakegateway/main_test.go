package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/testenv"
)

// getenv reads only env: the fake must not pick up the developer's GATEWAY_*.
func getenv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// MustRun starts the fake in-process on a free port and returns its base URL
// once /healthz answers.
func MustRun(tb testing.TB, env map[string]string) string {
	tb.Helper()
	addr := testenv.FreeAddr(tb)
	env["HTTP_ADDR"] = addr
	env["LOG_LEVEL"] = "warn"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, getenv(env), io.Discard) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("run: %v", err)
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			tb.Fatalf("run returned early: %v", err)
		default:
		}
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("fakegateway not up: %v", err)
		}
	}
}

func TestRun(t *testing.T) {
	base := MustRun(t, map[string]string{"GATEWAY_DECLINE_AMOUNT_CENTS": "13", "GATEWAY_LATENCY": "1ms"})
	c := gateway.NewClient(base, &http.Client{Timeout: 5 * time.Second})
	ctx := context.Background()

	t.Run("OK", func(t *testing.T) {
		if _, err := c.Charge(ctx, gateway.ChargeRequest{OrderID: "o1", AmountCents: 900, Currency: "INR"}, "order-o1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrDeclinedFromEnv", func(t *testing.T) {
		_, err := c.Charge(ctx, gateway.ChargeRequest{OrderID: "o2", AmountCents: 13, Currency: "INR"}, "order-o2")
		if !errors.Is(err, gateway.ErrDeclined) {
			t.Fatalf("err = %v, want ErrDeclined", err)
		}
	})
	t.Run("ErrFailuresSwitchedOnAtRuntime", func(t *testing.T) {
		put := func(body string) {
			r, _ := http.NewRequest(http.MethodPut, base+"/v1/admin/config", strings.NewReader(body))
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("PUT config %s: %d", body, resp.StatusCode)
			}
		}
		put(`{"fail_rate": 1}`)
		_, err := c.Charge(ctx, gateway.ChargeRequest{OrderID: "o3", AmountCents: 900, Currency: "INR"}, "order-o3")
		if !errors.Is(err, gateway.ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		put(`{"fail_rate": 0}`)
		if _, err := c.Charge(ctx, gateway.ChargeRequest{OrderID: "o3", AmountCents: 900, Currency: "INR"}, "order-o3"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRunRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		give map[string]string
	}{
		{"ErrFailRateNotANumber", map[string]string{"GATEWAY_FAIL_RATE": "half"}},
		{"ErrFailRateAboveOne", map[string]string{"GATEWAY_FAIL_RATE": "2"}},
		{"ErrLatencyNotADuration", map[string]string{"GATEWAY_LATENCY": "5"}},
		{"ErrDeclineNotAnInt", map[string]string{"GATEWAY_DECLINE_AMOUNT_CENTS": "1.5"}},
		{"ErrAddressInUse", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.give
			if env == nil { // a port already taken: run must say so, not hang
				base := MustRun(t, map[string]string{})
				env = map[string]string{"HTTP_ADDR": strings.TrimPrefix(base, "http://")}
			} else {
				env["HTTP_ADDR"] = testenv.FreeAddr(t)
			}
			env["LOG_LEVEL"] = "error"
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := run(ctx, nil, getenv(env), io.Discard); err == nil || ctx.Err() != nil {
				t.Fatalf("run = %v, want a configuration error at once", err)
			}
		})
	}
}
