// Command payment charges placed orders through the payment provider and
// announces the outcome, order.paid or order.payment_failed; it refunds the
// charge of a cancelled order (order.refunded), or makes sure an order
// cancelled before its charge is never charged. It announces through the
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
	"github.com/dabba/dabba/shared/consumer"
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
	// A batch's charges go out at once: keep an idle connection for each
	// message a batch can hold, rather than dialling the provider anew.
	q, _ := broker.LookupWorkQueue(broker.QueuePayment)
	transport := &http.Transport{MaxIdleConns: q.Workers * q.Batch, MaxIdleConnsPerHost: q.Workers * q.Batch, IdleConnTimeout: time.Minute}
	gw := gateway.NewClient(base.Env.String("PAYMENT_GATEWAY_URL", "http://127.0.0.1:8090"), &http.Client{Timeout: 10 * time.Second, Transport: transport})
	// The consumer writes order.paid and order.payment_failed to the
	// outbox. One relay publishes the outbox at a time: when it is this
	// service's, it is woken at once; otherwise the other's polls find
	// them within 10 ms. Either takes over when the other stops.
	pub := broker.NewPublisher(base.Broker, log)
	defer pub.Close()
	relay := outbox.NewRelay(base.DB, pub, log)
	inbox, err := base.Env.Duration("INBOX_RETENTION", consumer.DefaultInboxRetention)
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8082"), base.Router(), log, nil)
	})
	g.Go(func() error {
		return newConsumer(log, base.DB, gw, relay.Wake).InboxRetention(inbox).Run(ctx, base.Broker)
	})
	g.Go(func() error { return relay.Run(ctx) })
	return g.Wait()
}
