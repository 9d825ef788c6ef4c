// Command devstack is make run: it starts every Dabba service on this
// machine against the local PostgreSQL and RabbitMQ, prints where to look,
// and on Ctrl-C stops them all gracefully (consumers finish the messages in
// hand; what they had not started goes back to the queues).
//
// It expects the services' binaries next to its own (make build puts them
// all in bin/), and PostgreSQL and RabbitMQ running (make run's deps step
// sees to that).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/token"
)

// startTimeout bounds the wait for every service to be ready: a first run
// migrates the database, and a broker still booting can take a while.
const startTimeout = 90 * time.Second

// stopTimeout is each service's time to drain after SIGTERM before it is
// killed; the HTTP servers alone allow themselves 10 s.
const stopTimeout = 20 * time.Second

// devAdminToken is make run's admin token when ADMIN_TOKEN is not set.
const devAdminToken = "dev-admin-token"

func main() { service.Main("devstack", run) }

func run(ctx context.Context, _ []string, getenv func(string) string, stdout io.Writer) error {
	env := config.Env(getenv)
	// Create the database first, so the services do not race to do it and
	// a server that is down shows up as one clear error.
	if err := postgres.EnsureDatabase(ctx, env.DatabaseURL()); err != nil {
		return fmt.Errorf("database (is PostgreSQL running? make deps starts it): %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	binDir := filepath.Dir(self)
	ports := stack.DefaultPorts()
	// The admin API (dead letters) is on in development, with a token
	// everyone knows unless ADMIN_TOKEN says otherwise.
	adminToken := env.String("ADMIN_TOKEN", devAdminToken)
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	fmt.Fprintln(stdout, "devstack: starting the services…")
	s, err := stack.Start(startCtx, stack.Services(ports), binDir, stack.Environ(map[string]string{
		"DATABASE_URL": env.DatabaseURL(),
		"RABBITMQ_URL": env.String("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		"ADMIN_TOKEN":  adminToken,
		// Development mode: without TOKEN_SECRET the services sign with
		// the development secret (and say so), as bin/dabba token does.
		token.DevModeVar: "1",
	}), stdout)
	if err != nil {
		return err
	}
	shown := devAdminToken
	if adminToken != devAdminToken {
		shown = "$ADMIN_TOKEN" // a real secret stays off the terminal
	}
	printWelcome(stdout, ports, shown, env.String("TOKEN_SECRET", "") != "")

	waitErr := s.Wait(ctx)
	if waitErr != nil {
		fmt.Fprintln(stdout, "devstack: a service exited by itself; stopping the others…")
	} else {
		fmt.Fprintln(stdout, "devstack: stopping (each service finishes what it holds)…")
	}
	stopErr := s.Stop(stopTimeout)
	if waitErr == nil && stopErr == nil {
		fmt.Fprintln(stdout, "devstack: all stopped cleanly")
	}
	return errors.Join(waitErr, stopErr)
}

// printWelcome tells the user where everything is and how to try it;
// adminToken is the admin token as it may be shown, ownSecret whether the
// user set TOKEN_SECRET (bin/dabba token then needs it too).
func printWelcome(w io.Writer, p stack.Ports, adminToken string, ownSecret bool) {
	secret := "the development secret (DEV_MODE=1)"
	if ownSecret {
		secret = "your TOKEN_SECRET: export it where you run bin/dabba token"
	}
	fmt.Fprintf(w, `
Dabba is running. Ctrl-C stops it.
  orders API        http://127.0.0.1:%[1]d/v1/orders
  restaurant feed   http://127.0.0.1:%[2]d/v1/restaurants/{id}/orders
  tracking page     http://127.0.0.1:%[3]d/track/{order_id}?token={tracking_token}
  RabbitMQ UI       http://127.0.0.1:15672  (guest / guest)
  fake SMTP inbox   http://127.0.0.1:%[4]d/messages
  fake gateway      http://127.0.0.1:%[5]d/v1/charges
Tokens, signed with %[7]s (kinds: customer, restaurant, rider, ops, track):
  CUSTOMER=$(bin/dabba token customer c1) RESTAURANT=$(bin/dabba token restaurant r1) OPS=$(bin/dabba token ops me)
Place an order:
  curl -si localhost:%[1]d/v1/orders -H "Authorization: Bearer $CUSTOMER" -H 'Content-Type: application/json' -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
    -d '{"restaurant_id":"r1","email":"me@example.com","items":[{"sku":"thali","name":"Thali","quantity":1,"unit_price_cents":25000}],"delivery_address":{"line1":"Dadar","lat":19.02,"lng":72.84}}'
Watch riders move (in another terminal): make demo
Dead letters: bin/dabba dlq list, or
  curl -s localhost:%[1]d/v1/admin/dlq -H 'Authorization: Bearer %[6]s'

`, p.Orders, p.Restaurant, p.Tracking, p.SMTPHTTP, p.Gateway, adminToken, secret)
}
