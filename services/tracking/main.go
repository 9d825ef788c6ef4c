// Command tracking carries riders' GPS fixes through RabbitMQ to the
// customers watching their orders over WebSocket, and serves the tracking
// page.
//
// Subcommands: "mint-rider-token <rider_id>" prints a rider token (demos,
// tests); "simulate" places orders on the orders API and drives riders to
// them (make demo).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

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
		case "mint-rider-token":
			return mintRiderToken(args[2:], getenv, stdout)
		case "simulate":
			log, err := logging.New(getenv, "tracking")
			if err != nil {
				return err
			}
			return simulate(ctx, getenv, stdout, log)
		default:
			return fmt.Errorf("unknown subcommand %q (want mint-rider-token or simulate)", args[1])
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
	signer := token.NewSigner(token.SecretFromEnv(getenv, log))

	interest := NewInterest(uuid.NewString())
	relay := NewRelay(base.Broker, interest, log)
	hub := NewHub(relay)
	positions := NewPositionWriter(base.DB, log)
	limits := NewRiderLimits(riderRate, int(2*riderRate))
	ingest := NewIngest(base.Broker, hub, interest, positions, limits, log)
	sockets := NewSockets(perIP, maxSockets)
	times := newFixTimes(base.Metrics.TrackingFixTimes())

	base.Metrics.WatchTracking(metrics.Tracking{SocketsOpen: sockets.Open, FixesIn: counterOf(&ingest.Stats.Accepted),
		FixesOut: counterOf(&hub.Stats.Sent), Stale: counterOf(&hub.Stats.Stale), Coalesced: counterOf(&hub.Stats.Coalesced)})
	r := base.Router()
	addRoutes(r, log, base.DB, hub, relay, ingest, sockets, signer, times)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8081"), r, log, nil) })
	g.Go(func() error { return relay.Run(ctx, hub) })
	g.Go(func() error { return ingest.Run(ctx) })
	g.Go(func() error { return limits.Run(ctx) })
	g.Go(func() error { return interest.Run(ctx) })
	g.Go(func() error { return positions.Run(ctx, positionEvery) })
	g.Go(func() error { return orderFeed{db: base.DB, hub: hub, log: log}.Run(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		sockets.CloseAll()
		return nil
	})
	return g.Wait()
}

// mintRiderToken handles "tracking mint-rider-token [-ttl 24h] <rider_id>":
// it prints a rider token signed with TOKEN_SECRET.
func mintRiderToken(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mint-rider-token", flag.ContinueOnError)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || !validRiderID(fs.Arg(0)) {
		return errors.New("usage: tracking mint-rider-token [-ttl 24h] <rider_id> (no '.', '*', '#', '/' or spaces)")
	}
	log, err := logging.New(getenv, "tracking")
	if err != nil {
		return err
	}
	tok, err := token.NewSigner(token.SecretFromEnv(getenv, log)).Rider(fs.Arg(0), *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// counterOf reads a counter kept for /stats, for the metrics to share it.
func counterOf(c *atomic.Int64) func() int64 { return c.Load }
