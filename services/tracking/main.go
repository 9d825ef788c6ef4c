// Command tracking relays riders' GPS fixes through RabbitMQ to the customers
// watching their orders, over WebSocket.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

func main() { service.Main("tracking", run) }

// run serves the tracking API, or with "mint-rider-token <rider_id>" prints
// a rider token (for demos and tests).
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 1 && args[1] == "mint-rider-token" {
		return mintRiderToken(args[2:], getenv, stdout)
	}
	base, err := service.Open(ctx, "tracking", getenv)
	if err != nil {
		return err
	}
	defer base.Close()
	log := base.Log
	signer := token.NewSigner(token.SecretFromEnv(getenv, log))

	relay := NewRelay(base.Broker, log)
	hub := NewHub(relay)
	relay.SetHub(hub)
	pub := broker.NewTransientPublisher(base.Broker, log)
	defer pub.Close()
	positions := NewPositionWriter(base.DB, log)
	ingest := &Ingest{pub: pub, positions: positions, log: log}

	r := base.Router()
	addRoutes(r, log, base.DB, hub, ingest, signer)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return service.Serve(ctx, base.Env.String("HTTP_ADDR", ":8081"), r, log, nil) })
	g.Go(func() error { return relay.Run(ctx) })
	g.Go(func() error { return positions.Run(ctx, 500*time.Millisecond) })
	g.Go(func() error {
		return broker.Consume(ctx, base.Broker, broker.ConsumerConfig{Queue: broker.QueueTracking, Prefetch: 100, Concurrency: 4},
			handleOrderEvent(base.DB), log)
	})
	return g.Wait()
}

func mintRiderToken(args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) != 1 || !validRiderID(args[0]) {
		return errors.New("usage: tracking mint-rider-token <rider_id>")
	}
	log, err := logging.New(getenv, "tracking")
	if err != nil {
		return err
	}
	tok, err := token.NewSigner(token.SecretFromEnv(getenv, log)).Rider(args[0], 24*time.Hour)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
