// Package testenv gives tests the real PostgreSQL and RabbitMQ they run
// against: DATABASE_URL and RABBITMQ_URL, or the local defaults.
package testenv

import (
	"context"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
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

// MustOwnSchema returns a pool on a migrated schema of the test's own,
// dropped with the test, so that what the test writes (outbox rows, a
// projection's position) is seen by nothing else running meanwhile (the
// relays and projections of other packages' tests, a stack), and the test
// sees nothing of theirs.
func MustOwnSchema(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	db, _ := MustOwnSchemaURL(tb)
	return db
}

// MustOwnSchemaURL is MustOwnSchema that also returns the schema's
// DATABASE_URL, for a service the test runs on it (MustRun).
func MustOwnSchemaURL(tb testing.TB) (*pgxpool.Pool, string) {
	tb.Helper()
	shared := MustDB(tb)
	schema := "test_" + strings.ReplaceAll(uuid.NewString()[:13], "-", "")
	ctx := context.Background()
	if _, err := shared.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := shared.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Error(err)
		}
	})
	dbURL := Env.DatabaseURL()
	if u, err := url.Parse(dbURL); err == nil && u.Scheme != "" {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		dbURL = u.String()
	} else {
		dbURL += " search_path=" + schema
	}
	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(db.Close)
	if err := postgres.Migrate(ctx, db); err != nil {
		tb.Fatal(err)
	}
	return db, dbURL
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

// MustToken returns a token of role (a token audience) for sub, valid for
// an hour, signed with secret: a test's caller of a service run with that
// TOKEN_SECRET.
func MustToken(tb testing.TB, secret, role, sub string) string {
	tb.Helper()
	tok, err := token.NewSigner([]byte(secret)).Mint(role, sub, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}
