// Command email sends customers the e-mails their order's events call for,
// through an SMTP server, within the provider's rate limit.
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
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "email: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	base, err := service.Open(ctx, "email", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	perMinute, err := base.Env.Int("EMAIL_RATE_PER_MINUTE", 25)
	if err != nil {
		return err
	}
	if perMinute < 1 {
		return fmt.Errorf("EMAIL_RATE_PER_MINUTE must be at least 1, got %d", perMinute)
	}
	limiter := rate.NewLimiter(rate.Every(time.Minute/time.Duration(perMinute)), 1)
	sender, err := NewSMTPSender(base.Env.String("SMTP_ADDR", "127.0.0.1:1025"), base.Env.String("EMAIL_FROM", "Dabba <orders@dabba.local>"))
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8084"), base.Router(), base.Log, nil)
	})
	g.Go(func() error {
		// The rate limit is the bottleneck: a small prefetch leaves the
		// backlog in the queue, where a crash cannot lose it and an
		// operator can see it, and a long handler timeout covers the
		// wait for a send slot.
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueEmail, Prefetch: 4, Concurrency: 2,
			HandlerTimeout: 10 * time.Minute}, handleOrderEmail(base.DB, limiter, sender), base.Log)
	})
	return g.Wait()
}
