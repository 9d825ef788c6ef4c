// Command tracking carries riders' GPS fixes through RabbitMQ to the
// customers watching their orders over WebSocket, and serves the tracking
// page.
//
// Subcommand "simulate" places orders on the orders API and drives riders
// to them (make demo). Tokens for your own experiments: bin/dabba token.
package main

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

func main() { service.Main("tracking", run) }

// positionEvery is how often the ingest stores riders' latest positions: at
// most one row write per rider per interval, all riders in one statement.
const positionEvery = time.Second

// run serves the tracking API until ctx is done, or runs a subcommand.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 1 {
		switch args[1] {
		case "simulate":
			log, err := logging.New(getenv, "tracking")
			if err != nil {
				return err
			}
			return simulate(ctx, getenv, stdout, log)
		default:
			return fmt.Errorf("unknown subcommand %q (want simulate; tokens: dabba token)", args[1])
		}
	}
	base, err := service.Open(ctx, "tracking", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log
	perIP, err := base.Env.Int("TRACKING_MAX_CONNS_PER_IP", 1000)
	if err != nil {
		return err
	}
	maxSockets, err := base.Env.Int("TRACKING_MAX_SOCKETS", 100_000)
	if err != nil {
		return err
	}
	riderRate, err := base.Env.Float("TRACKING_RIDER_RATE", 10)
	if err != nil {
		return err
	}
	secret, err := token.SecretFromEnv(getenv, log)
	if err != nil {
		return err
	}
	guard := auth.NewGuard(token.NewSigner(secret))

	relay := NewRelay(base.Broker, log)
	hub := NewHub(relay)
	positions := NewPositionWriter(base.DB, log)
	limits := NewRiderLimits(riderRate, int(2*riderRate))
	ingest := NewIngest(base.Broker, positions, limits, log)
	sockets := NewSockets(perIP, maxSockets)

	base.Metrics.WatchTracking(metrics.Tracking{SocketsOpen: sockets.Open, FixesIn: counterOf(&ingest.Stats.Accepted),
		FixesOut: counterOf(&hub.Stats.Sent), Stale: counterOf(&hub.Stats.Stale), Coalesced: counterOf(&hub.Stats.Coalesced)})
	r := base.Router()
	addRoutes(r, log, base.DB, hub, relay, ingest, sockets, guard, base.Admin)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8081"), r, log, nil) })
	g.Go(func() error { return relay.Run(ctx, hub) })
	g.Go(func() error { return ingest.Run(ctx) })
	g.Go(func() error { return limits.Run(ctx) })
	g.Go(func() error { return positions.Run(ctx, positionEvery) })
	g.Go(func() error { return orderFeed{db: base.DB, hub: hub, log: log}.Run(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		sockets.CloseAll()
		return nil
	})
	return g.Wait()
}

// counterOf reads a counter kept for /stats, for the metrics to share it.
func counterOf(c *atomic.Int64) func() int64 { return c.Load }
