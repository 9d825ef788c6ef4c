// Package service starts what every Dabba service needs: its logger, the
// migrated database, the broker connection with the topology declared, and
// an HTTP server with health endpoints that shuts down gracefully.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/logging"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/trace"
)

// Base holds a service's shared dependencies.
type Base struct {
	Name   string
	Env    config.Env
	Log    *zap.Logger
	DB     *pgxpool.Pool
	Broker *broker.Conn
	// Metrics is this run's registry, served at /metrics; the broker
	// connection and everything on it record into it.
	Metrics *metrics.Set
	// AdminToken (ADMIN_TOKEN) opens what exposes the process's
	// internals: its profiler, and whatever a service puts behind Admin.
	AdminToken string

	topology atomic.Bool
	stop     context.CancelFunc
	pprof    bool // serve /debug/pprof (DEBUG_PPROF=1)
}

// Open builds the logger, creates and migrates the database, and connects to
// the broker, declaring the topology in the background as soon as the
// broker answers (a service starts even while the broker is down).
func Open(ctx context.Context, name string, getenv func(string) string) (*Base, error) {
	env := config.Env(getenv)
	log, err := logging.New(getenv, name)
	if err != nil {
		return nil, err
	}
	url := env.DatabaseURL()
	if err := postgres.EnsureDatabase(ctx, url); err != nil {
		return nil, err
	}
	if n := env.String("DATABASE_POOL_SIZE", ""); n != "" {
		url = postgres.WithParam(url, "pool_max_conns", n)
	}
	// pg_stat_activity (and an operator) can tell whose connection is whose.
	url = postgres.WithParam(url, "application_name", name)
	db, err := postgres.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := postgres.Migrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	broker.LogLibrary(log)
	bctx, stop := context.WithCancel(context.Background())
	m := metrics.New()
	conn := broker.Dial(env.BrokerURLs(), name, log)
	conn.Instrument(m)
	b := &Base{Name: name, Env: env, Log: log, DB: db, Broker: conn, Metrics: m, AdminToken: env.String("ADMIN_TOKEN", ""),
		stop: stop, pprof: env.String("DEBUG_PPROF", "") == "1"}
	go b.declareTopology(bctx)
	return b, nil
}

// declareTopology declares the topology once the broker answers, and again
// after every reconnect: a broker that came back empty (a new container
// without its volume) gets its queues back, and /readyz stays failing until
// it has them.
func (b *Base) declareTopology(ctx context.Context) {
	for {
		seen := b.Broker.Reconnects.Load() // before declaring: a reconnect meanwhile means declaring again
		b.declareOnce(ctx)
		t := time.NewTicker(time.Second)
		for b.Broker.Reconnects.Load() == seen && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
		t.Stop()
		if ctx.Err() != nil {
			return
		}
		b.topology.Store(false)
	}
}

func (b *Base) declareOnce(ctx context.Context) {
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := broker.DeclareTopology(ctx, b.Broker)
		if err == nil {
			b.topology.Store(true)
			return
		}
		if ctx.Err() != nil {
			return
		}
		b.Log.Warn("declare topology", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Close releases the broker connection and the database pool.
func (b *Base) Close() {
	b.stop()
	b.Broker.Close()
	b.DB.Close()
	_ = b.Log.Sync()
}

// Router returns a chi router with trace propagation (W3C traceparent),
// request metrics, panic recovery, request logging, and the /metrics,
// /healthz (alive) and /readyz (database and broker reachable, topology
// declared) endpoints.
func (b *Base) Router() chi.Router {
	r := chi.NewRouter()
	r.Use(trace.Middleware, b.Metrics.Middleware, httpx.Recoverer(b.Log), httpx.LogRequests(b.Log))
	r.Method(http.MethodGet, "/metrics", b.Metrics.Handler())
	if b.pprof {
		// Go's profiler, for make bench's profiles: off unless asked for,
		// and behind the admin token, since a profile costs CPU and tells
		// a caller much.
		r.Mount("/debug", b.Admin(middleware.Profiler()))
	}
	r.Method(http.MethodGet, "/healthz", httpx.Healthz())
	r.Method(http.MethodGet, "/readyz", httpx.Readyz(map[string]httpx.Check{
		"database": func(r *http.Request) error {
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			return b.DB.Ping(ctx)
		},
		"broker": func(*http.Request) error {
			if !b.Broker.Ready() {
				return errors.New("not connected")
			}
			if !b.topology.Load() {
				return errors.New("topology not declared yet")
			}
			return nil
		},
	}))
	return r
}

// Admin returns h behind the admin token (auth.Admin).
func (b *Base) Admin(h http.Handler) http.Handler { return auth.Admin(b.AdminToken, h) }

// Timeouts of every server, so that slow or idle clients cannot hold
// connections (and their goroutines and buffers) for ever: a request's
// headers must arrive within ReadHeaderTimeout and the whole request
// within ReadTimeout (1 MiB, the largest body, at 35 KB/s), and a
// keep-alive connection with nothing to do is closed after IdleTimeout.
// There is no write timeout: a WebSocket's writes are bounded by the
// handler, per message, and a hijacked connection loses these deadlines.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 30 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// Serve serves h on addr until ctx is done, then shuts down, giving requests
// in flight up to 10 seconds. ready, if not nil, receives the bound address
// (useful with ":0" in tests).
func Serve(ctx context.Context, addr string, h http.Handler, log *zap.Logger, ready chan<- string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := NewServer(h)
	log.Info("listening", zap.String("addr", ln.Addr().String()))
	if ready != nil {
		ready <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// NewServer returns the server Serve serves h with: its timeouts, and
// headers of at most 64 KiB.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout, IdleTimeout: IdleTimeout,
		MaxHeaderBytes: 64 << 10}
}

// Healthcheck is the "healthcheck" subcommand every binary answers, for
// container runtimes whose images have no curl: it asks the service's own
// /readyz on HTTP_ADDR and reports through the exit code.
func Healthcheck(getenv func(string) string) error {
	addr := config.Env(getenv).String("HTTP_ADDR", ":8080")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz answered %d", resp.StatusCode)
	}
	return nil
}

// RunFunc is a service's run: it serves until ctx is done, then drains.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error

// gcPercent is the services' GOGC unless the environment sets one.
const gcPercent = 400

// Main is every binary's main: it answers the "healthcheck" subcommand, or
// calls run with a context cancelled on SIGINT or SIGTERM and exits non-zero
// on error.
func Main(name string, run RunFunc) {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		if err := Healthcheck(os.Getenv); err != nil {
			fmt.Fprintf(os.Stderr, "%s: unhealthy: %v\n", name, err)
			os.Exit(1)
		}
		return
	}
	if os.Getenv("GOGC") == "" {
		// A service's live heap is a few MiB, so with Go's default the
		// collector runs every few MiB allocated: under load, many times
		// a second, for a measurable share of the CPU. Letting the heap
		// grow to five times the live data costs tens of MiB and makes
		// collections a quarter as frequent. GOGC still overrides it.
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		stop()
		os.Exit(1)
	}
}
