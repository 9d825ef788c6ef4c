// Command devstack is make run: it starts every Dabba service on this
// machine against the local PostgreSQL and RabbitMQ, prints where to look,
// and on Ctrl-C stops them all gracefully (consumers finish the messages in
// hand; what they had not started goes back to the queues).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/stack"
)

func main() { service.Main("devstack", run) }

func run(ctx context.Context, _ []string, getenv func(string) string, stdout io.Writer) error {
	env := config.Env(getenv)
	// Create the database first, so the services do not race to do it.
	if err := postgres.EnsureDatabase(ctx, env.DatabaseURL()); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir := filepath.Dir(self)
	svcs := stack.Services(stack.DefaultPorts)
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	s, err := stack.Start(startCtx, svcs, binDir, stack.Environ(map[string]string{
		"DATABASE_URL": env.DatabaseURL(),
		"RABBITMQ_URL": env.String("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
	}), stdout)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, `
Dabba is running. Ctrl-C stops it.
  orders API        http://127.0.0.1:8080/v1/orders
  restaurant feed   http://127.0.0.1:8083/v1/restaurants/{id}/orders
  tracking socket   ws://127.0.0.1:8081/v1/orders/{id}/track?token=<tracking_token>
  RabbitMQ UI       http://127.0.0.1:15672  (guest / guest)
  fake SMTP inbox   http://127.0.0.1:8025/messages
  fake gateway      http://127.0.0.1:8090/v1/charges
Try:
  curl -si localhost:8080/v1/orders -H 'Content-Type: application/json' -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
    -d '{"customer_id":"c1","restaurant_id":"r1","email":"me@example.com","items":[{"sku":"thali","name":"Thali","quantity":1,"unit_price_cents":25000}],"delivery_address":{"line1":"Dadar","lat":19.02,"lng":72.84}}'

`)
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping…")
	s.Stop(15 * time.Second)
	return nil
}
