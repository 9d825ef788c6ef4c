// Command restaurant keeps each restaurant's feed of orders: new, paid and
// cancelled ones, as the order events arrive.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "restaurant: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "restaurant", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	r := base.Router()
	addRoutes(r, base.Log, base.DB)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8083"), r, base.Log, nil)
	})
	g.Go(func() error {
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueRestaurant, Prefetch: 100, Concurrency: 8},
			handleRestaurantEvent(base.DB), base.Log)
	})
	return g.Wait()
}
