// Command email sends customers the e-mails their order's events call for
// (order.placed, order.paid, order.payment_failed, order.delivered) through
// an SMTP server, within the mail provider's rate limit.
package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("email", run) }

// concurrency is how many e-mails are in hand at once. The rate limit is the
// bottleneck, not the SMTP round trip, so more would only hold more
// messages out of the queue.
const concurrency = 2

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests and the consumer the e-mails in hand.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "email", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log

	perMinute, err := base.Env.Int("EMAIL_RATE_PER_MINUTE", 25)
	if err != nil {
		return err
	}
	if perMinute < 1 {
		return fmt.Errorf("EMAIL_RATE_PER_MINUTE must be at least 1, got %d", perMinute)
	}
	interval := time.Minute / time.Duration(perMinute)
	// Burst 1: the provider counts sends per minute, and an even pace
	// never trips it.
	limiter := rate.NewLimiter(rate.Every(interval), 1)
	sender, err := NewSMTPSender(base.Env.String("SMTP_ADDR", "127.0.0.1:1025"), base.Env.String("EMAIL_FROM", "Dabba <orders@dabba.local>"))
	if err != nil {
		return err
	}
	defer sender.Close() // after the consumer drained: QUIT the session it kept open
	renderer, err := NewRenderer()
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8084"), base.Router(), log, nil)
	})
	g.Go(func() error {
		// A small prefetch keeps a burst's backlog in the queue, where a
		// crash cannot lose it and an operator can see it. The handler
		// timeout covers the longest wait for a send slot (every worker
		// queued on the limiter) plus the send: limiter.Wait fails at once
		// when the deadline is nearer than the slot.
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueEmail, Prefetch: 5, Concurrency: concurrency,
			HandlerTimeout: concurrency*interval + 2*sendTimeout}, handleOrderEmail(log, base.DB, limiter, sender, renderer), log)
	})
	return g.Wait()
}
