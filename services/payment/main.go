// Command payment charges placed orders through the payment provider and
// announces the outcome, order.paid or order.payment_failed, through the
// transactional outbox, which it relays to RabbitMQ itself.
package main

import (
	"context"
	"io"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("payment", run) }

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests, the consumer the charges in hand and
// the relay the batch it is publishing.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "payment", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log
	// The client timeout stays well inside the consumer's handler timeout
	// (30 s), so a hung provider is a retried error, not a stuck worker.
	gw := gateway.NewClient(base.Env.String("PAYMENT_GATEWAY_URL", "http://127.0.0.1:8090"), &http.Client{Timeout: 10 * time.Second})
	// The consumer writes order.paid and order.payment_failed to the
	// outbox: this service's own relay publishes them as soon as it is
	// woken. Relays elsewhere (orders) would only find them at their next
	// poll.
	pub := broker.NewPublisher(base.Broker, log)
	defer pub.Close()
	relay := outbox.NewRelay(base.DB, pub, log)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8082"), base.Router(), log, nil)
	})
	g.Go(func() error {
		// A charge waits on a remote provider: a few workers hide its
		// latency, and a small prefetch bounds what a crash sends back.
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueuePayment, Prefetch: 20, Concurrency: 8},
			wakeAfter(handleOrderPlaced(log, base.DB, gw), relay.Wake), log)
	})
	g.Go(func() error { return relay.Run(ctx) })
	return g.Wait()
}

// wakeAfter calls wake after every message h handled without error: h
// returns nil only once its transaction, outbox row included, committed.
// A wake for a message that wrote no row (a duplicate) costs the relay one
// empty claim. It lives here, around the handler, so the consumer itself
// need not know of the relay.
func wakeAfter(h broker.Handler, wake func()) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		err := h(ctx, d)
		if err == nil {
			wake()
		}
		return err
	}
}
