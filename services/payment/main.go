// Command payment charges placed orders through the payment provider and
// announces order.paid or order.payment_failed.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "payment: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "payment", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	gw := gateway.NewClient(base.Env.String("PAYMENT_GATEWAY_URL", "http://127.0.0.1:8090"), &http.Client{Timeout: 10 * time.Second})

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8082"), base.Router(), base.Log, nil)
	})
	g.Go(func() error {
		// A charge waits on a remote provider: a small prefetch bounds what
		// a crash sends back, a few workers hide the provider's latency.
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueuePayment, Prefetch: 32, Concurrency: 16},
			handleOrderPlaced(base.Log, base.DB, gw), base.Log)
	})
	return g.Wait()
}
