// Command fakegateway runs the fake payment provider (package gateway's Fake)
// as its own server, for make run and the end-to-end tests: they reconfigure
// it at runtime through PUT /v1/admin/config and read its ledger through
// GET /v1/charges.
package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("fakegateway", run) }

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	env := config.Env(getenv)
	log, err := logging.New(getenv, "fakegateway")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg, err := fakeConfig(env)
	if err != nil {
		return err
	}
	log.Info("fake payment provider", zap.Float64("fail_rate", cfg.FailRate), zap.Duration("latency", cfg.Latency),
		zap.Int64("decline_amount_cents", cfg.DeclineAmountCents))
	return service.Serve(ctx, env.String("HTTP_ADDR", ":8090"), gateway.NewFake(cfg), log, nil)
}

func fakeConfig(env config.Env) (gateway.FakeConfig, error) {
	failRate, err := env.Float("GATEWAY_FAIL_RATE", 0)
	if err != nil {
		return gateway.FakeConfig{}, err
	}
	if failRate < 0 || failRate > 1 {
		return gateway.FakeConfig{}, fmt.Errorf("GATEWAY_FAIL_RATE must be within 0..1, got %v", failRate)
	}
	latency, err := env.Duration("GATEWAY_LATENCY", 20*time.Millisecond)
	if err != nil {
		return gateway.FakeConfig{}, err
	}
	if latency < 0 {
		return gateway.FakeConfig{}, fmt.Errorf("GATEWAY_LATENCY must not be negative, got %v", latency)
	}
	decline, err := env.Int("GATEWAY_DECLINE_AMOUNT_CENTS", 0)
	if err != nil {
		return gateway.FakeConfig{}, err
	}
	if decline < 0 {
		return gateway.FakeConfig{}, fmt.Errorf("GATEWAY_DECLINE_AMOUNT_CENTS must not be negative, got %d", decline)
	}
	return gateway.FakeConfig{FailRate: failRate, Latency: latency, DeclineAmountCents: int64(decline)}, nil
}
