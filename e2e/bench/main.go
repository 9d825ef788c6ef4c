// Command bench measures how fast orders and rider fixes flow through a
// Dabba stack, and states each figure beside the raw ceiling of the same
// machine measured in the same run: PostgreSQL committing an order and its
// outbox row, RabbitMQ publishing persistent messages with confirms to four
// quorum queues and draining them, RabbitMQ publishing transient fixes.
// Absolute numbers drift between runs on shared machines; ratios within one
// run do not. A last step states what per-order ordering costs: CPU per
// order at one rate with it on and with it off, in alternating windows
// (ordering.go).
//
// It starts its own stack (shared/stack, ports 190xx) against the machine's
// PostgreSQL and RabbitMQ, prints a table and writes every figure as JSON.
// make bench runs the full sizes, make bench-quick a scaled-down run of
// a minute or so that fails only on errors (a lost order), never on speed.
//
// A developer can run part of it: -only picks steps, -rates replaces the
// order rates searched, -hold the time the best is held (for instance
// -only orders -rates 300,500,700 -hold 60s). DABBA_BENCH_PPROF=1 fetches
// a CPU profile from each service that serves /debug/pprof/profile while
// the best rate is held.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/stack"
)

// sizes are what a run measures; quick scales every one down.
type sizes struct {
	Ceiling      time.Duration // each ceiling's measuring time
	Concurrency  int           // PostgreSQL ceiling's connections
	Probe        time.Duration // each step of the order-rate search
	Rates        []int         // the order rates tried, in order
	Hold         time.Duration // the best rate held this long
	Low          time.Duration // the second, lower rate held this long, for the marginal CPU
	Settle       time.Duration // the backlog stays empty this long before a measured window
	Burst        int           // orders in the burst
	BurstOver    time.Duration // ...sent over this long
	Riders       int           // rider sockets, each sending a fix every FixEvery
	FixEvery     time.Duration
	Customers    int // customers watching a sample of the riders
	LocationsFor time.Duration
	IdleSockets  int           // idle customer sockets for the memory figure
	Soak         time.Duration // how long make soak holds its rate
	SoakRate     int           // orders a second during the soak
	// The ordering step's rate, well below the highest passing (about
	// 500/s on this machine), and each of its windows: a warm-up, the
	// measured hold, then the stack measured at rest.
	OrderingRate   int
	OrderingWarmup time.Duration
	OrderingHold   time.Duration
	OrderingIdle   time.Duration
}

var (
	full = sizes{Ceiling: 10 * time.Second, Concurrency: 16, Probe: 10 * time.Second,
		Rates: []int{50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000}, Hold: 60 * time.Second, Low: 20 * time.Second, Settle: 2 * time.Second,
		Burst: 100_000, BurstOver: time.Minute, Riders: 10_000, FixEvery: 500 * time.Millisecond, Customers: 200,
		LocationsFor: 30 * time.Second, IdleSockets: 10_000, Soak: 30 * time.Minute, SoakRate: 100,
		OrderingRate: 200, OrderingWarmup: 5 * time.Second, OrderingHold: 30 * time.Second, OrderingIdle: 10 * time.Second}
	quick = sizes{Ceiling: 2 * time.Second, Concurrency: 16, Probe: 2 * time.Second,
		Rates: []int{50, 100}, Hold: 3 * time.Second, Low: 2 * time.Second, Settle: time.Second,
		Burst: 500, BurstOver: 2 * time.Second, Riders: 200, FixEvery: 500 * time.Millisecond, Customers: 20,
		LocationsFor: 3 * time.Second, IdleSockets: 500, Soak: 4 * time.Minute, SoakRate: 20,
		OrderingRate: 50, OrderingWarmup: time.Second, OrderingHold: 3 * time.Second, OrderingIdle: time.Second}
)

// benchPorts keep the bench clear of make run and of the e2e suite.
var benchPorts = stack.Ports{Orders: 19080, Tracking: 19081, Payment: 19082, Restaurant: 19083, Email: 19084, Analytics: 19085,
	Gateway: 19090, SMTPHTTP: 19025, SMTP: 11925}

// benchSecret signs the stack's tokens, so the bench can mint them (as
// long as a production secret must be: the stack runs as in production).
const benchSecret = "bench-secret-of-at-least-32-bytes"

// benchAdminToken opens the services' /stats and /debug/pprof.
const benchAdminToken = "bench-admin-token"

// benchEnv is the bench stack's environment, over the bench's own.
var benchEnv = map[string]string{
	"TOKEN_SECRET":              benchSecret,
	"ADMIN_TOKEN":               benchAdminToken,
	"LOG_LEVEL":                 "warn",
	"LOG_FORMAT":                "json",
	"ORDERS_RATE_PER_IP":        "0", // one load generator is one address
	"TRACKING_MAX_CONNS_PER_IP": "0",
	"EMAIL_RATE_PER_MINUTE":     "6000000", // see the report: the real limit is a business rule
	"GATEWAY_LATENCY":           "5ms",
	"DEBUG_PPROF":               "1", // the stack serves /debug/pprof for DABBA_BENCH_PPROF
}

// steps are the bench's steps, in the order they run.
var steps = []string{
	"ceilings", // first: every later figure is stated beside them
	"memory",   // before the load: the tracking process is fresh, its heap not yet grown
	"orders",
	"burst",
	"locations",
	"ordering", // last of the usual steps: it restarts the stack, which then runs as before
	"soak",     // only when asked for (make soak): half an hour
}

// onlyWhenAsked are the steps a run without -only leaves out.
var onlyWhenAsked = []string{"soak"}

// partialOut is where a run of some steps, or of other rates or hold,
// writes by default, so a developer's probe never replaces the figures of
// the full run that the README cites.
var partialOut = filepath.Join(os.TempDir(), "dabba-bench-partial.json")

// options are a run's choices besides its sizes.
type options struct {
	quick bool
	out   string
	steps map[string]bool // the steps to run
	pprof bool            // fetch CPU profiles from the services during the hold
}

func main() {
	quickRun := flag.Bool("quick", false, "scale every size down (make bench-quick)")
	out := flag.String("out", "e2e/bench/results.json", "where to write the results as JSON (a run with -only, -rates or -hold defaults to "+partialOut+")")
	riders := flag.Int("riders", 0, "rider sockets (default 10000, quick 200)")
	burst := flag.Int("burst", 0, "orders in the burst (default 100000 over a minute, quick 500), sent at the same rate")
	rates := flag.String("rates", "", "order rates to search instead of the default list, comma-separated (e.g. 300,500,700)")
	hold := flag.Duration("hold", 0, "how long the best rate is held (default 60s, quick 3s)")
	soak := flag.Duration("soak", 0, "how long the soak step holds its rate (default 30m, quick 4m)")
	soakRate := flag.Int("soak-rate", 0, "orders a second during the soak (default 100, quick 20)")
	only := flag.String("only", "", "run only these steps, comma-separated, of "+strings.Join(steps, ",")+" (the ceilings run whenever orders or burst do)")
	flag.Parse()
	sz := full
	if *quickRun {
		sz = quick
	}
	if *riders > 0 {
		sz.Riders = *riders
	}
	if *burst > 0 {
		sz.BurstOver = time.Duration(float64(sz.BurstOver) * float64(*burst) / float64(sz.Burst))
		sz.Burst = *burst
	}
	if *rates != "" {
		rs, err := parseRates(*rates)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -rates:", err)
			os.Exit(2)
		}
		sz.Rates = rs
	}
	if *soak > 0 {
		sz.Soak = *soak
	}
	if *soakRate > 0 {
		sz.SoakRate = *soakRate
	}
	if *hold > 0 {
		sz.Hold = *hold
	}
	chosen, err := parseSteps(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: -only:", err)
		os.Exit(2)
	}
	opt := options{quick: *quickRun, out: *out, steps: chosen, pprof: os.Getenv("DABBA_BENCH_PPROF") == "1"}
	outSet := false
	flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	if !outSet && (*only != "" || *rates != "" || *hold > 0) {
		opt.out = partialOut
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, sz, opt); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseRates reads "300,500,700".
func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("%q is not a rate (orders a second, above 0)", f)
		}
		out = append(out, r)
	}
	return out, nil
}

// parseSteps reads "orders,burst"; empty means every step. The ceilings
// join orders and burst: their figures are stated beside the same run's
// ceilings, and ceilings of another run would make the ratios meaningless.
func parseSteps(s string) (map[string]bool, error) {
	out := map[string]bool{}
	if s == "" {
		for _, st := range steps {
			out[st] = !slices.Contains(onlyWhenAsked, st)
		}
		return out, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(steps, f) {
			return nil, fmt.Errorf("no step %q (steps: %s)", f, strings.Join(steps, ", "))
		}
		out[f] = true
	}
	if out["orders"] || out["burst"] {
		out["ceilings"] = true
	}
	return out, nil
}

func run(ctx context.Context, sz sizes, opt options) error {
	raiseFileLimit()
	env := config.Env(os.Getenv)
	wd, _ := os.Getwd()
	root, err := stack.ModuleRoot(wd)
	if err != nil {
		return err
	}
	bin, err := os.MkdirTemp("", "dabba-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	svcs := stack.Services(benchPorts)
	began := time.Now()
	fmt.Println("bench: building the services")
	if err := stack.Build(ctx, root, bin, svcs); err != nil {
		return err
	}
	if err := postgres.EnsureDatabase(ctx, env.DatabaseURL()); err != nil {
		return err
	}
	db, err := postgres.Open(ctx, env.DatabaseURL())
	if err != nil {
		return err
	}
	defer db.Close()
	if err := postgres.Migrate(ctx, db); err != nil {
		return err
	}
	logs, err := os.Create(filepath.Join(os.TempDir(), "dabba-bench.log"))
	if err != nil {
		return err
	}
	defer logs.Close()
	stackEnv := maps.Clone(benchEnv)
	if opt.steps["soak"] {
		maps.Copy(stackEnv, soakEnv)
	}
	s, err := stack.Start(ctx, svcs, bin, stack.Environ(stackEnv), logs)
	if err != nil {
		return fmt.Errorf("start the stack: %w (logs in %s)", err, logs.Name())
	}
	b := &bench{sz: sz, db: db, dbURL: env.DatabaseURL(), stack: s, amqpURL: env.BrokerURLs()[0], pprof: opt.pprof}
	// The ordering step restarts the stack: the one to stop is the last.
	defer func() { _ = b.stack.Stop(30 * time.Second) }()
	b.restart = func(ctx context.Context, over map[string]string) error {
		if err := b.stack.Stop(30 * time.Second); err != nil {
			return fmt.Errorf("stop the stack: %w (logs in %s)", err, logs.Name())
		}
		e := maps.Clone(stackEnv)
		maps.Copy(e, over)
		s, err := stack.Start(ctx, svcs, bin, stack.Environ(e), logs)
		if err != nil {
			return fmt.Errorf("start the stack: %w (logs in %s)", err, logs.Name())
		}
		b.stack = s
		return nil
	}
	fmt.Printf("bench: stack up after %.1f s (logs in %s)\n", time.Since(began).Seconds(), logs.Name())
	if err := seedMenu(ctx); err != nil {
		return err
	}

	r := &Results{Date: time.Now().UTC(), Cores: runtime.NumCPU(), Quick: opt.quick, Go: runtime.Version(), Versions: versions(ctx, db)}
	b.r = r
	fns := map[string]func(context.Context) error{
		"ceilings": b.ceilings, "memory": b.memory, "orders": b.orders, "burst": b.burst, "locations": b.locations,
		"ordering": b.ordering, "soak": b.soak,
	}
	for _, st := range steps {
		if !opt.steps[st] {
			continue
		}
		r.Steps = append(r.Steps, st)
		fmt.Printf("bench: %s…\n", st)
		began := time.Now()
		if err := fns[st](ctx); err != nil {
			return fmt.Errorf("%s: %w", st, err)
		}
		// Where the time goes: the quick run must stay near a minute.
		fmt.Printf("bench: %s took %.1f s\n", st, time.Since(began).Seconds())
	}
	b.peakRSS()
	r.print(os.Stdout)
	data, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(opt.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Println("bench: results in", opt.out)
	if len(r.Lost) > 0 {
		return fmt.Errorf("orders lost: %v", r.Lost)
	}
	if len(r.Soak.Growing) > 0 {
		return fmt.Errorf("soak: still growing: %s", strings.Join(r.Soak.Growing, "; "))
	}
	return nil
}

// raiseFileLimit lifts the open-file limit to its hard maximum: ten
// thousand rider sockets and as many customers' need it, and the stack's
// processes inherit it.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
