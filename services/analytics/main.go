// Command analytics records every order event for reporting. It consumes the
// analytics queue (order.#) in batches (broker.WorkQueues has their size)
// and writes each batch's events with one statement per type.
package main

import (
	"context"
	"io"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("analytics", run) }

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests and the consumer writes and acks the
// batch in hand.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "analytics", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8085"), base.Router(), log, nil)
	})
	g.Go(func() error {
		return newConsumer(log, base.DB).Run(ctx, base.Broker)
	})
	return g.Wait()
}
