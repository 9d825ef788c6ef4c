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

	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/service"
)

func main() { service.Main("email", run) }

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests and the consumer the e-mails in hand.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "email", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log

	inbox, err := base.Env.Duration("INBOX_RETENTION", consumer.DefaultInboxRetention)
	if err != nil {
		return err
	}
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
		return newConsumer(log, base.DB, limiter, sender, renderer).InboxRetention(inbox).Run(ctx, base.Broker)
	})
	return g.Wait()
}
