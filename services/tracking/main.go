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
	"runtime/debug"
	"strings"
	"sync/atomic"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

func main() { service.Main("tracking", run) }

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
	if getenv("GOGC") == "" {
		// Not the services' 400 (service.Main): tracking's live heap is its
		// sockets, tens to hundreds of MiB, not a few, so four times as much
		// again for garbage would put an idle customer's socket at 20 KiB of
		// memory instead of 13 (measured: make bench's memory step), while
		// its hot path allocates little enough that collecting at 100 costs
		// under 1 ms of CPU per 1,000 fixes. GOGC still overrides it.
		debug.SetGCPercent(100)
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
	historyDays, err := base.Env.Int("TRACKING_HISTORY_DAYS", 7)
	if err != nil {
		return err
	}
	if historyDays < 1 {
		return fmt.Errorf("TRACKING_HISTORY_DAYS: %d, want at least 1", historyDays)
	}
	nearMeters, err := base.Env.Float("TRACKING_NEAR_METERS", 300)
	if err != nil {
		return err
	}
	if !(nearMeters > 0) {
		return fmt.Errorf("TRACKING_NEAR_METERS: %g, want more than 0", nearMeters)
	}
	page := pageConfig{TileURL: base.Env.String("TRACKING_TILE_URL", defaultTileURL),
		Attribution: base.Env.String("TRACKING_TILE_ATTRIBUTION", defaultTileAttribution)}
	if page.TileURL == "none" {
		page.TileURL = ""
	} else if tileOrigin(page.TileURL) == "" || !strings.Contains(page.TileURL, "{z}") || !strings.Contains(page.TileURL, "{x}") ||
		!strings.Contains(page.TileURL, "{y}") {
		return fmt.Errorf("TRACKING_TILE_URL %q: want an http(s) URL with {z}, {x} and {y}, or none", page.TileURL)
	}
	secret, err := token.SecretFromEnv(getenv, log)
	if err != nil {
		return err
	}
	guard := auth.NewGuard(token.NewSigner(secret))

	interest := NewInterest(uuid.NewString())
	relay := NewRelay(base.Broker, interest, log)
	hub := NewHub(relay)
	// Tracking writes the outbox (its alerts) but runs no relay of its own:
	// one relay publishes the whole outbox at a time (orders' or
	// payment's), polling it every 10 ms, so an alert goes out within
	// milliseconds anyway, and a relay here could become the one that
	// publishes every order's events from the process sized for sockets.
	// If orders and payment are both away, alerts wait in the outbox.
	alerts := NewAlerts(base.DB, nearMeters, log)
	hist := NewHistory(base.DB, historyDays, log)
	deliveries := NewDeliveries(base.DB, hist, alerts, log)
	limits := NewRiderLimits(riderRate, int(2*riderRate))
	ingest := NewIngest(base.Broker, hub, interest, deliveries, limits, log)
	sockets := NewSockets(perIP, maxSockets)
	times := newFixTimes(base.Metrics.TrackingFixTimes())

	base.Metrics.WatchTracking(metrics.Tracking{SocketsOpen: sockets.Open, FixesIn: counterOf(&ingest.Stats.Accepted),
		FixesOut: counterOf(&hub.Stats.Sent), Stale: counterOf(&hub.Stats.Stale), Coalesced: counterOf(&hub.Stats.Coalesced)})
	r := base.Router()
	addRoutes(r, log, base.DB, hub, relay, ingest, sockets, hist, guard, base.Admin, times, page)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8081"), r, log, nil) })
	g.Go(func() error { return relay.Run(ctx, hub) })
	g.Go(func() error { return ingest.Run(ctx) })
	g.Go(func() error { return limits.Run(ctx) })
	g.Go(func() error { return interest.Run(ctx) })
	g.Go(func() error { return hist.Run(ctx) })
	g.Go(func() error { return alerts.Run(ctx) })
	g.Go(func() error { return deliveries.Run(ctx) })
	g.Go(func() error { return orderFeed{db: base.DB, hub: hub, deliveries: deliveries, log: log}.Run(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		sockets.CloseAll()
		return nil
	})
	return g.Wait()
}

// counterOf reads a counter kept for /stats, for the metrics to share it.
func counterOf(c *atomic.Int64) func() int64 { return c.Load }
