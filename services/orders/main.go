// Command orders serves the order API, relays the transactional outbox to
// RabbitMQ and applies the payment service's outcomes to orders.
package main

import (
	"context"
	"io"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

func main() { service.Main("orders", run) }

// run starts the service and blocks until ctx is done, then drains it: the
// HTTP server finishes its requests and consumers their messages in hand.
func run(ctx context.Context, _ []string, getenv func(string) string, _ io.Writer) error {
	// The API's requests are many short transactions that commit
	// together: twice the consumers' pool.
	base, err := service.Open(ctx, "orders", config.WithDefault(getenv, "DATABASE_POOL_SIZE", "16"))
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log

	pub := broker.NewPublisher(base.Broker, log)
	defer pub.Close()
	relay := outbox.NewRelay(base.DB, pub, log)
	store := NewStore(base.DB, relay.Wake)
	if store.KeyTTL, err = base.Env.Duration("IDEMPOTENCY_KEY_TTL", DefaultKeyTTL); err != nil {
		return err
	}
	secret, err := token.SecretFromEnv(getenv, log)
	if err != nil {
		return err
	}
	signer := token.NewSigner(secret)

	var limits Limits
	if limits.PerIP, err = base.Env.Int("ORDERS_RATE_PER_IP", 200); err != nil {
		return err
	}
	// Four requests per database connection: enough to keep the pool busy,
	// few enough that none waits long for one.
	if limits.InFlight, err = base.Env.Int("ORDERS_MAX_IN_FLIGHT", 64); err != nil {
		return err
	}
	// How long the outbox keeps a row every reader has passed: the relay's
	// and projections' positions keep what they have not, whatever this
	// says; past it an operator can still read an event in the outbox.
	outboxRetention, err := base.Env.Duration("OUTBOX_RETENTION", time.Hour)
	if err != nil {
		return err
	}
	r := base.Router()
	addRoutes(r, log, store, signer, auth.NewGuard(signer), limits, base.AdminToken, base.Broker, base.DB)
	// The relay runs here, so the outbox's backlog is watched here.
	base.Metrics.WatchOutbox(func(ctx context.Context) (int64, time.Duration, error) { return outbox.Backlog(ctx, base.DB) })

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8080"), r, log, nil)
	})
	g.Go(func() error { return relay.Run(ctx) })
	g.Go(func() error { return paymentOutcomes().Run(ctx, base.DB, log) })
	g.Go(func() error { sweep(ctx, store, outboxRetention, log); return nil })
	return g.Wait()
}

// sweepEvery is how often expired idempotency keys and old outbox rows are
// swept: often enough that each sweep is a few small batches.
const sweepEvery = time.Minute

// sweep removes expired idempotency keys and outbox rows older than
// outboxRetention that every reader has passed.
func sweep(ctx context.Context, store *Store, outboxRetention time.Duration, log *zap.Logger) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		if err := store.Sweep(ctx, outboxRetention); err != nil && ctx.Err() == nil {
			log.Warn("sweep", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
