// Command restaurant keeps the restaurant-side feed: it consumes the
// restaurant-notify queue (order.placed, order.paid, order.cancelled,
// order.refunded, order.rider_arriving), records one notification per event
// for the order's restaurant, and serves the feed at
// GET /v1/restaurants/{id}/orders to the restaurant and operators. It keeps
// each restaurant's record (where it is) at /v1/restaurants/{id}.
package main

import (
	"context"
	"io"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

func main() { service.Main("restaurant", run) }

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests and the consumer its messages in hand.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "restaurant", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log

	secret, err := token.SecretFromEnv(getenv, log)
	if err != nil {
		return err
	}
	r := base.Router()
	addRoutes(r, log, base.DB, auth.NewGuard(token.NewSigner(secret)))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8083"), r, log, nil)
	})
	g.Go(func() error {
		return newConsumer(log, base.DB).Run(ctx, base.Broker)
	})
	return g.Wait()
}
