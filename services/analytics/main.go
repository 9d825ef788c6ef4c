// Command analytics records every order event for reporting. It consumes the
// analytics queue (order.#) in batches of up to 1000 events or one second's
// worth, whichever comes first, and writes each batch in one statement.
package main

import (
	"context"
	"io"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/broker"
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
		// The prefetch follows MaxBatch (ConsumeBatch raises it), so a
		// full batch can be in hand at once.
		return broker.ConsumeBatch(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueAnalytics, MaxBatch: 1000, MaxWait: time.Second},
			handleEventBatch(log, base.DB), log)
	})
	return g.Wait()
}
