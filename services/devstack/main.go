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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	if err := seedMenu(ctx, fmt.Sprintf("http://127.0.0.1:%d", ports.Orders), getenv); err != nil {
		_ = s.Stop(stopTimeout)
		return fmt.Errorf("seed the demo restaurant's menu: %w", err)
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

// demoRestaurant is the restaurant make run seeds, so the README's order
// works as printed; demoMenu is its menu.
const demoRestaurant = "r1"

var demoMenu = map[string]any{"items": []map[string]any{
	{"sku": "thali", "name": "Veg thali", "price_cents": 25000, "available": true},
	{"sku": "biryani", "name": "Chicken biryani", "price_cents": 32000, "available": true},
	{"sku": "dosa", "name": "Masala dosa", "price_cents": 12000, "available": true},
	{"sku": "lassi", "name": "Mango lassi", "price_cents": 9000, "available": true},
	{"sku": "kulfi", "name": "Pista kulfi", "price_cents": 8000, "available": false},
}}

// seedMenu gives the demo restaurant its menu through the orders API, as
// an operator would, unless it has one (a menu changed by hand stays).
func seedMenu(ctx context.Context, ordersURL string, getenv func(string) string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := ordersURL + "/v1/restaurants/" + demoRestaurant + "/menu"
	var current struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := call(ctx, http.MethodGet, url, "", nil, &current); err != nil {
		return err
	}
	if len(current.Items) > 0 {
		return nil
	}
	secret, _ := token.ClientSecret(getenv)
	ops, err := token.NewSigner(secret).Mint(token.AudienceOps, "devstack", time.Minute)
	if err != nil {
		return err
	}
	return call(ctx, http.MethodPut, url, ops, demoMenu, nil)
}

// call sends body (if not nil) as JSON with tok (if not empty) and decodes
// a 200 answer into out (if not nil).
func call(ctx context.Context, method, url, tok string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
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
Restaurant r1's menu (seeded): curl -s localhost:%[1]d/v1/restaurants/r1/menu
Place an order (priced from the menu):
  curl -si localhost:%[1]d/v1/orders -H "Authorization: Bearer $CUSTOMER" -H 'Content-Type: application/json' -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
    -d '{"restaurant_id":"r1","email":"me@example.com","items":[{"sku":"thali","quantity":1}],"delivery_address":{"line1":"Dadar","lat":19.02,"lng":72.84}}'
Watch riders move (in another terminal): make demo
Dead letters: bin/dabba dlq list, or
  curl -s localhost:%[1]d/v1/admin/dlq -H 'Authorization: Bearer %[6]s'

`, p.Orders, p.Restaurant, p.Tracking, p.SMTPHTTP, p.Gateway, adminToken, secret)
}
