// Package testenv gives tests the real PostgreSQL and RabbitMQ they run
// against: DATABASE_URL and RABBITMQ_URL, or the local defaults.
package testenv

import (
	"context"
	"net"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/postgres"
)

// Env is the process environment as a config.Env.
var Env = config.Env(os.Getenv)

// MustDB opens the migrated test database and closes it with the test.
func MustDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx := context.Background()
	url := Env.DatabaseURL()
	if err := postgres.EnsureDatabase(ctx, url); err != nil {
		tb.Fatal(err)
	}
	db, err := postgres.Open(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(db.Close)
	if err := postgres.Migrate(ctx, db); err != nil {
		tb.Fatal(err)
	}
	return db
}

// MustBroker dials the test broker, declares the topology and closes the
// connection with the test.
func MustBroker(tb testing.TB) *broker.Conn {
	tb.Helper()
	c := broker.Dial(Env.BrokerURLs(), "test-"+tb.Name(), zaptest.NewLogger(tb))
	tb.Cleanup(func() { c.Close() })
	if err := broker.DeclareTopology(context.Background(), c); err != nil {
		tb.Fatal(err)
	}
	return c
}

// FreeAddr returns a loopback address with a port free right now.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Getenv returns a getenv for a service's run: overrides first, then the
// process environment.
func Getenv(overrides map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := overrides[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
}
