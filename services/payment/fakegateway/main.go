// Command fakegateway runs the fake payment provider (package gateway's Fake)
// as its own server, for make run and the end-to-end tests.
package main

import (
	"context"
	"io"
	"time"

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
	failRate, err := env.Float("GATEWAY_FAIL_RATE", 0)
	if err != nil {
		return err
	}
	latency, err := env.Duration("GATEWAY_LATENCY", 20*time.Millisecond)
	if err != nil {
		return err
	}
	decline, err := env.Int("GATEWAY_DECLINE_AMOUNT_CENTS", 0)
	if err != nil {
		return err
	}
	fake := gateway.NewFake(gateway.FakeConfig{FailRate: failRate, Latency: latency, DeclineAmountCents: int64(decline)})
	return service.Serve(ctx, env.String("HTTP_ADDR", ":8090"), fake, log, nil)
}
