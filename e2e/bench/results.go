package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Results is every figure of a run, as written to the JSON file.
type Results struct {
	Date     time.Time         `json:"date"`
	Cores    int               `json:"cores"`
	Quick    bool              `json:"quick"`
	Go       string            `json:"go"`
	Versions map[string]string `json:"versions"`
	Steps    []string          `json:"steps"` // the steps this run ran (-only)

	Ceilings struct {
		PostgresOrderTxPerS       float64 `json:"postgres_order_tx_per_s"`           // order + outbox row per transaction
		PostgresConcurrency       int     `json:"postgres_concurrency"`              // connections committing at once
		RabbitPersistentPerS      float64 `json:"rabbit_persistent_published_per_s"` // confirmed, to 4 quorum queues
		RabbitPersistentDrainPerS float64 `json:"rabbit_persistent_delivered_per_s"` // deliveries acked, 4 per message
		RabbitTransientPerS       float64 `json:"rabbit_transient_delivered_per_s"`
	} `json:"ceilings"`

	Probes []Probe `json:"order_rate_probes"`
	Orders struct {
		Rate            int     `json:"rate_per_s"` // the highest rate that passed its probe
		Seconds         float64 `json:"held_s"`
		Accepted        int     `json:"accepted"`
		Errors          int     `json:"errors"`
		Latency         Lat     `json:"post_latency"`
		EndToEnd        Lat     `json:"end_to_end_latency"`   // POST → the last consumer's committed effect
		PostToPaid      Lat     `json:"post_to_paid_latency"` // the order's created_at → its paid entry in order_status_history
		FractionOfPG    float64 `json:"fraction_of_postgres_ceiling"`
		AllDoneWithin5s bool    `json:"all_paid_and_recorded_within_5s"`
		AllDoneAfterS   float64 `json:"all_paid_and_recorded_after_s"`
		MaxQueueBacklog int     `json:"max_queue_backlog"`
		MaxOutboxUnsent int     `json:"max_outbox_unsent"`
		LimitedBy       string  `json:"limited_by"`
		// Where the CPU went while the rate was held: the average
		// milliseconds per order for each part (all it used, idle costs
		// included, over the orders), and the share of all cores busy.
		CPUMsPerOrder map[string]float64 `json:"cpu_ms_per_order"`
		CoresBusy     float64            `json:"cores_busy_fraction"`
		Marginal      Marginal           `json:"cpu_marginal"`
	} `json:"orders"`

	Burst struct {
		Orders              int     `json:"orders"`
		OverS               float64 `json:"over_s"`
		Rate                int     `json:"rate_per_s"`
		Accepted            int     `json:"accepted"`               // on the first and only try
		AcceptedFirstTryPct float64 `json:"accepted_first_try_pct"` // accepted of those sent
		Refused             int     `json:"refused"`                // 503 with Retry-After: told to retry, nothing stored
		NoAnswer            int     `json:"no_answer"`              // the client gave up waiting
		Latency             Lat     `json:"post_latency"`
		DrainS              float64 `json:"drain_s"`   // end of the burst → every accepted order's four effects
		NoneLost            bool    `json:"none_lost"` // every accepted order stored with its effects, nothing unexpected
		EmailAtDefaultLimit float64 `json:"email_drain_at_25_per_min_h"`
	} `json:"burst"`

	Locations LocationResults `json:"locations"`

	Ordering OrderingResults `json:"ordering"`

	Memory struct {
		PeakRSSKiB         map[string]int64 `json:"peak_rss_kib"`
		IdleSockets        int              `json:"idle_sockets"`
		BytesPerIdleSocket float64          `json:"bytes_per_idle_socket"`
	} `json:"memory"`

	Soak SoakResults `json:"soak"`

	Lost []string `json:"lost,omitempty"`
}

// Marginal is what one more order a second costs in CPU: the slope between
// the hold and a second window at a lower rate, so that what the parts
// spend whatever the rate is not charged to the orders.
type Marginal struct {
	LowRate        int                `json:"low_rate_per_s"` // offered in the second window
	LowSeconds     float64            `json:"low_held_s"`
	LowErrors      int                `json:"low_errors"`
	HighOrdersPerS float64            `json:"high_accepted_per_s"` // the slope's rates: accepted a second
	LowOrdersPerS  float64            `json:"low_accepted_per_s"`
	HighCPUMsPerS  map[string]float64 `json:"high_cpu_ms_per_s"` // each part's CPU a second in each window
	LowCPUMsPerS   map[string]float64 `json:"low_cpu_ms_per_s"`
	MsPerOrder     map[string]float64 `json:"ms_per_order"`
	MsPerOrderSum  float64            `json:"ms_per_order_sum"`
	Skipped        string             `json:"skipped,omitempty"` // why there is no slope
}

// Probe is one step of the search for the highest order rate.
type Probe struct {
	Rate     int    `json:"rate_per_s"`
	Latency  Lat    `json:"post_latency"`
	Errors   int    `json:"errors"`
	Backlog  int    `json:"queue_backlog"`
	Unsent   int    `json:"outbox_unsent"`
	Passed   bool   `json:"passed"`
	Why      string `json:"why,omitempty"`
	Accepted int    `json:"accepted"`
}

// Lat summarises latencies, in milliseconds.
type Lat struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(d []time.Duration) Lat {
	if len(d) == 0 {
		return Lat{}
	}
	slices.Sort(d)
	at := func(q float64) float64 { return ms(d[int(q*float64(len(d)-1))]) }
	return Lat{N: len(d), P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: ms(d[len(d)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (l Lat) String() string {
	return fmt.Sprintf("p50 %.1f  p95 %.1f  p99 %.1f  max %.1f ms (n=%d)", l.P50, l.P95, l.P99, l.Max, l.N)
}

func versions(ctx context.Context, db *pgxpool.Pool) map[string]string {
	v := map[string]string{}
	var pg string
	if db.QueryRow(ctx, "SHOW server_version").Scan(&pg) == nil {
		v["postgresql"] = pg
	}
	return v
}

// print writes the human table.
func (r *Results) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	c := r.Ceilings
	fmt.Fprintf(tw, "\nDabba bench, %s, %d cores%s\n", r.Date.Format(time.RFC3339), r.Cores, map[bool]string{true: " (quick sizes)"}[r.Quick])
	fmt.Fprintln(tw, "figure\tvalue\tceiling (same run)\tratio")
	// A run of some steps (-only) prints only theirs: zeros for the
	// others would read as measured.
	ran := func(step string) bool { return slices.Contains(r.Steps, step) }
	if ran("ceilings") {
		fmt.Fprintf(tw, "PostgreSQL: order + outbox row per tx (%d conns)\t%.0f tx/s\t\t\n", c.PostgresConcurrency, c.PostgresOrderTxPerS)
		fmt.Fprintf(tw, "RabbitMQ: persistent, confirmed, 4 quorum queues\t%.0f msg/s in, %.0f deliveries/s out\t\t\n", c.RabbitPersistentPerS, c.RabbitPersistentDrainPerS)
		fmt.Fprintf(tw, "RabbitMQ: transient to a topic exchange\t%.0f msg/s delivered\t\t\n", c.RabbitTransientPerS)
	}
	if ran("orders") {
		o, m := r.Orders, r.Orders.Marginal
		fmt.Fprintf(tw, "orders: highest rate passing (p99 ≤ 50 ms, no errors, queues flat)\t%d/s\t%.0f tx/s (PostgreSQL)\t%.0f%%\n", o.Rate, c.PostgresOrderTxPerS, 100*o.FractionOfPG)
		fmt.Fprintf(tw, "orders: held %.0f s, accepted / errors\t%d / %d\t\t\n", o.Seconds, o.Accepted, o.Errors)
		fmt.Fprintf(tw, "orders: POST latency\t%s\t\t\n", o.Latency)
		fmt.Fprintf(tw, "orders: POST → paid (order_status_history)\t%s\t\t\n", o.PostToPaid)
		fmt.Fprintf(tw, "orders: POST → last consumer's effect\t%s\t\t\n", o.EndToEnd)
		fmt.Fprintf(tw, "orders: all paid and in analytics within 5 s of the end\t%v (after %.1f s)\t\t\n", o.AllDoneWithin5s, o.AllDoneAfterS)
		fmt.Fprintf(tw, "orders: what stopped the next rate\t%s\t\t\n", o.LimitedBy)
		fmt.Fprintf(tw, "orders: CPU while held (%.0f%% of all cores busy), average ms per order, idle included\t%s\t\t\n", 100*o.CoresBusy, withSum(o.CPUMsPerOrder))
		if m.Skipped != "" {
			fmt.Fprintf(tw, "orders: marginal CPU per order\tnot measured: %s\t\t\n", m.Skipped)
		} else {
			// Windows of seconds catch RabbitMQ's and PostgreSQL's
			// periodic work unevenly: the quick run's slope is noise.
			fmt.Fprintf(tw, "orders: marginal CPU, ms per order (slope %.1f → %.1f orders/s; %d/s offered for %.0f s%s)\t%s\t\t\n",
				m.LowOrdersPerS, m.HighOrdersPerS, m.LowRate, m.LowSeconds, map[bool]string{true: "; quick: noise"}[r.Quick], withSum(m.MsPerOrder))
		}
	}
	if ran("burst") {
		bu := r.Burst
		fmt.Fprintf(tw, "burst: %d orders at %d/s over %.0f s\t%d accepted on first try (%.1f%%), %d refused (503), %d unanswered\t\t\n",
			bu.Orders, bu.Rate, bu.OverS, bu.Accepted, bu.AcceptedFirstTryPct, bu.Refused, bu.NoAnswer)
		fmt.Fprintf(tw, "burst: POST latency\t%s\t\t\n", bu.Latency)
		fmt.Fprintf(tw, "burst: drain after the burst (every effect); nothing lost\t%.1f s; %v\t\t\n", bu.DrainS, bu.NoneLost)
		fmt.Fprintf(tw, "burst: e-mail at the default 25/min limit\t%.1f h\t\t\n", bu.EmailAtDefaultLimit)
	}
	if ran("locations") {
		r.Locations.print(tw, c.RabbitTransientPerS)
	}
	if ran("ordering") {
		r.Ordering.print(tw, r.Quick)
	}
	if ran("soak") {
		r.Soak.print(tw)
	}
	m := r.Memory
	if ran("memory") {
		fmt.Fprintf(tw, "memory: per idle customer socket (%d open)\t%.1f KiB\t\t\n", m.IdleSockets, m.BytesPerIdleSocket/1024)
	}
	peaks := map[string]float64{}
	for n, kib := range m.PeakRSSKiB {
		peaks[n] = float64(kib) / 1024
	}
	fmt.Fprintf(tw, "memory: peak RSS (MiB)\t%s\t\t\n", sortedFigures(peaks, 0))
	if len(r.Lost) > 0 {
		fmt.Fprintf(tw, "LOST\t%v\t\t\n", r.Lost)
	}
	tw.Flush()
}

// withSum prints milliseconds per order for each part after their sum.
func withSum(m map[string]float64) string {
	return fmt.Sprintf("total %.1f: %s", sumMs(m), sortedFigures(m, 1))
}

// sumMs is the sum of the parts' figures.
func sumMs(m map[string]float64) float64 {
	var sum float64
	for _, v := range m {
		sum += v
	}
	return sum
}

// sortedFigures prints name-value pairs, largest first.
func sortedFigures(m map[string]float64, decimals int) string {
	names := slices.Collect(maps.Keys(m))
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %.*f", n, decimals, m[n]))
	}
	return strings.Join(parts, ", ")
}
