// Command analytics records every order event, in batches, for reporting.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "analytics: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "analytics", getenv)
	if err != nil {
		return err
	}
	defer base.Close()

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8085"), base.Router(), base.Log, nil)
	})
	g.Go(func() error {
		// Up to 1000 events or one second's worth, whichever comes first.
		return broker.ConsumeBatch(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueAnalytics, MaxBatch: 1000, MaxWait: time.Second},
			handleEventBatch(base.DB), base.Log)
	})
	return g.Wait()
}
