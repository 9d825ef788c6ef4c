package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
)

// The soak: make soak holds a steady order rate for a long time (30 min
// unless -soak says otherwise) and samples, every minute, what would give a
// leak or an unbounded table away. It runs the stack with short retentions
// (soakEnv), so that the tables that are meant to be bounded reach their
// bound within the run and then stay flat.

// soakEnv shortens what the soak's stack keeps: outbox rows every reader
// has passed, inbox records and idempotency records.
var soakEnv = map[string]string{
	"OUTBOX_RETENTION":    "2m",
	"INBOX_RETENTION":     "5m",
	"IDEMPOTENCY_KEY_TTL": "5m",
}

// boundedTables must not grow once their retention is reached; the effect
// tables (orders, their history, payments, notifications, e-mails,
// analytics, the riders' path) grow with the orders by design.
var boundedTables = []string{"outbox", "processed_messages", "idempotency_keys", "outbox_readers"}

// SoakSample is what one minute of the soak ended with.
type SoakSample struct {
	Minute     int              `json:"minute"`
	Orders     int              `json:"orders"` // accepted in the minute
	Errors     int              `json:"errors"`
	RSSMiB     map[string]int64 `json:"rss_mib"`
	Goroutines map[string]int   `json:"goroutines"`
	TableKiB   map[string]int64 `json:"table_kib"` // with its indexes and TOAST
	TableRows  map[string]int64 `json:"table_rows"`
	Queued     map[string]int   `json:"queued"`      // messages: work, retry and dead-letter queues
	Conns      map[string]int   `json:"connections"` // postgresql, rabbitmq
}

// SoakResults is the soak's samples and what they say.
type SoakResults struct {
	Rate    int          `json:"rate_per_s"`
	Minutes int          `json:"minutes"`
	Samples []SoakSample `json:"samples"`
	Growing []string     `json:"growing,omitempty"` // what grew once it should have stopped
}

func (b *bench) soak(ctx context.Context) error {
	rate, minutes := b.sz.SoakRate, int(b.sz.Soak/time.Minute)
	b.r.Soak.Rate, b.r.Soak.Minutes = rate, minutes
	fmt.Printf("bench: soak at %d orders/s for %d min\n", rate, minutes)
	sample := func(minute int, res loadResult) (SoakSample, error) {
		s := SoakSample{Minute: minute, Orders: len(res.ids), Errors: len(res.errors) + res.noAnswer}
		var err error
		if s.RSSMiB, s.Goroutines, err = b.processes(ctx); err != nil {
			return s, err
		}
		if s.TableKiB, s.TableRows, err = b.tables(ctx); err != nil {
			return s, err
		}
		if s.Queued, err = b.queued(); err != nil {
			return s, err
		}
		s.Conns, err = b.connections(ctx)
		return s, err
	}
	first, err := sample(0, loadResult{})
	if err != nil {
		return err
	}
	b.r.Soak.Samples = append(b.r.Soak.Samples, first)
	for m := 1; m <= minutes && ctx.Err() == nil; m++ {
		res := openLoop(ctx, fmt.Sprintf("soak-%d", m), rate, rate*60)
		s, err := sample(m, res)
		if err != nil {
			return err
		}
		b.r.Soak.Samples = append(b.r.Soak.Samples, s)
		fmt.Printf("bench: soak minute %d: %s\n", m, s)
	}
	b.r.Soak.Growing = growing(b.r.Soak.Samples)
	return ctx.Err()
}

func (s SoakSample) String() string {
	var tables []string
	for _, t := range boundedTables {
		tables = append(tables, fmt.Sprintf("%s %d kB/%d rows", t, s.TableKiB[t], s.TableRows[t]))
	}
	return fmt.Sprintf("%d orders, %d errors | RSS MiB %v | goroutines %v | %s | queued %v | connections %v",
		s.Orders, s.Errors, s.RSSMiB, s.Goroutines, strings.Join(tables, ", "), s.Queued, s.Conns)
}

// growing names what kept growing over the soak's last two thirds, once
// retentions have been reached and every process has warmed up: a bounded
// table, a process's memory or goroutines, a queue, connections. It
// allows a fifth more (and a few units) for noise: garbage collection,
// vacuum's timing, the minute's luck.
func growing(samples []SoakSample) []string {
	if len(samples) < 4 {
		return nil
	}
	from, last := samples[len(samples)/3], samples[len(samples)-1]
	var out []string
	more := func(what string, was, now int64, slack int64) {
		if now > was+was/5+slack {
			out = append(out, fmt.Sprintf("%s %d → %d", what, was, now))
		}
	}
	for _, t := range boundedTables {
		more("table "+t+" (kB)", from.TableKiB[t], last.TableKiB[t], 256)
	}
	for name, v := range last.RSSMiB {
		// The fakes stand in for a payment provider and a mail
		// server; the fake inbox keeps mail up to a bound by design.
		if !strings.HasPrefix(name, "fake") {
			more(name+" RSS (MiB)", from.RSSMiB[name], v, 8)
		}
	}
	for name, v := range last.Goroutines {
		more(name+" goroutines", int64(from.Goroutines[name]), int64(v), 10)
	}
	for kind, v := range last.Queued {
		more("queued in "+kind, int64(from.Queued[kind]), int64(v), 100)
	}
	for kind, v := range last.Conns {
		more(kind+" connections", int64(from.Conns[kind]), int64(v), 2)
	}
	slices.Sort(out)
	return out
}

// processes reads each service's resident memory and, from its /metrics,
// its goroutines.
func (b *bench) processes(ctx context.Context) (map[string]int64, map[string]int, error) {
	rss, goroutines := map[string]int64{}, map[string]int{}
	for _, p := range b.stack.Procs {
		if kib, err := procRSS(p.Pid()); err == nil {
			rss[p.Name] = kib / 1024
		}
		if n, err := metricValue(ctx, "http://"+p.Addr+"/metrics", "go_goroutines"); err == nil {
			goroutines[p.Name] = int(n)
		}
	}
	return rss, goroutines, nil
}

// procRSS reads a process's resident memory in KiB.
func procRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// metricValue reads one unlabelled sample from a Prometheus exposition.
func metricValue(ctx context.Context, url, name string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", url, name)
}

// tables reads every table's size (with its indexes) and live rows.
func (b *bench) tables(ctx context.Context) (map[string]int64, map[string]int64, error) {
	kib, rows := map[string]int64{}, map[string]int64{}
	r, err := b.db.Query(ctx, `SELECT c.relname, pg_total_relation_size(c.oid) / 1024, c.reltuples::bigint
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() AND NOT c.relispartition`)
	if err != nil {
		return nil, nil, fmt.Errorf("table sizes: %w", err)
	}
	defer r.Close()
	for r.Next() {
		var name string
		var k, n int64
		if err := r.Scan(&name, &k, &n); err != nil {
			return nil, nil, err
		}
		kib[name], rows[name] = k, max(n, 0)
	}
	// reltuples is ANALYZE's estimate; the bounded tables are counted.
	for _, t := range boundedTables {
		var n int64
		if err := b.db.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
			return nil, nil, err
		}
		rows[t] = n
	}
	return kib, rows, r.Err()
}

// queued counts the messages in the work queues, their retry queues and
// their dead-letter queues.
func (b *bench) queued() (map[string]int, error) {
	conn, err := amqp.Dial(b.amqpURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	out := map[string]int{}
	for _, q := range broker.WorkQueues {
		names := map[string]string{q.Name: "work", broker.DLQ(q.Name): "dead"}
		for _, d := range broker.RetryDelays {
			names[broker.RetryQueue(q.Name, d)] = "retry"
		}
		for name, kind := range names {
			ch, err := conn.Channel()
			if err != nil {
				return nil, err
			}
			info, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
			ch.Close()
			if err != nil {
				continue // a queue the topology has not declared (yet)
			}
			out[kind] += info.Messages
		}
	}
	return out, nil
}

// connections counts PostgreSQL's sessions on the database and RabbitMQ's
// connections.
func (b *bench) connections(ctx context.Context) (map[string]int, error) {
	out := map[string]int{}
	var pg int
	if err := b.db.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").Scan(&pg); err != nil {
		return nil, err
	}
	out["postgresql"] = pg
	mgmt := os.Getenv("RABBITMQ_MANAGEMENT_URL")
	if mgmt == "" {
		mgmt = "http://guest:guest@127.0.0.1:15672"
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, mgmt+"/api/connections?columns=name", nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return out, nil // the management plugin is optional here
	}
	defer resp.Body.Close()
	var conns []json.RawMessage
	if json.NewDecoder(resp.Body).Decode(&conns) == nil {
		out["rabbitmq"] = len(conns)
	}
	return out, nil
}

// print writes the soak's rows: what the bounded tables, the processes and
// the queues held at the start, a third of the way (retentions reached)
// and at the end, and what kept growing.
func (s SoakResults) print(w io.Writer) {
	if len(s.Samples) == 0 {
		return
	}
	at := []SoakSample{s.Samples[0], s.Samples[len(s.Samples)/3], s.Samples[len(s.Samples)-1]}
	orders, errs := 0, 0
	for _, x := range s.Samples {
		orders, errs = orders+x.Orders, errs+x.Errors
	}
	fmt.Fprintf(w, "soak: %d orders/s for %d min\t%d orders, %d errors\t\t\n", s.Rate, s.Minutes, orders, errs)
	row := func(what string, v func(SoakSample) string) {
		fmt.Fprintf(w, "soak: %s (min %d, %d, %d)\t%s → %s → %s\t\t\n", what, at[0].Minute, at[1].Minute, at[2].Minute, v(at[0]), v(at[1]), v(at[2]))
	}
	for _, t := range boundedTables {
		row("table "+t+" kB / rows", func(x SoakSample) string { return fmt.Sprintf("%d / %d", x.TableKiB[t], x.TableRows[t]) })
	}
	row("RSS MiB", func(x SoakSample) string { return fmt.Sprint(x.RSSMiB) })
	row("goroutines", func(x SoakSample) string { return fmt.Sprint(x.Goroutines) })
	row("queued", func(x SoakSample) string { return fmt.Sprint(x.Queued) })
	row("connections", func(x SoakSample) string { return fmt.Sprint(x.Conns) })
	verdict := "nothing"
	if len(s.Growing) > 0 {
		verdict = strings.Join(s.Growing, "; ")
	}
	fmt.Fprintf(w, "soak: still growing after the first third, besides the effect tables\t%s\t\t\n", verdict)
}
