package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/postgres"
)

// The ordering step: what per-order ordering (shared/consumer,
// migrations/012_order_sequence.sql) costs, as CPU per order summed over
// every part of the machine's stack, at one rate well below the highest
// passing, with ordering on and with it off. The outbox trigger numbers
// nothing when the session's dabba.ordering is off; a stack whose
// DATABASE_URL carries the parameter (pgx sends it at connect) writes
// unnumbered events, and its consumers take them the plain way.
//
// The machine's speed drifts by up to 40 % within the hour, more than the
// cost looked for, so the modes take turns in windows on, off, off, on: a
// drift steady over the step weighs on both alike, where on, off, on, off
// would charge one of them half a window's drift. The stack is restarted
// with its mode's DATABASE_URL before every window, so that each starts
// from the same state (fresh processes, none of the earlier steps' heaps
// and backlogs), warms up at the rate, settles, is measured under load,
// settles again and is measured at rest. The last window runs with
// ordering on, so the stack ends as it runs for the other steps.
//
// Two costs come out. The average, as the orders step's hold takes it:
// all the CPU of the windows over their orders, what the stack spends at
// rest included, which dilutes the difference. And the marginal: CPU a
// second under load less at rest, over orders a second, the slope between
// the rate and no orders (what the stack spends at rest is more than half
// of it at 200/s on this machine).

// orderingWindows are the modes of the step's windows, in the order run.
var orderingWindows = []bool{true, false, false, true}

// OrderingResults is the ordering step's figures.
type OrderingResults struct {
	Rate    int          `json:"rate_per_s"`
	HeldS   float64      `json:"held_s"`   // each window under load
	WarmupS float64      `json:"warmup_s"` // before each, not measured
	IdleS   float64      `json:"idle_s"`   // each window at rest
	On      OrderingMode `json:"on"`
	Off     OrderingMode `json:"off"`
	// CostPct is (on − off) / off of the average CPU per order, all parts
	// together; MarginalCostPct the same of the marginal.
	CostPct         float64          `json:"cost_pct"`
	MarginalCostPct float64          `json:"marginal_cost_pct"`
	Windows         []OrderingWindow `json:"windows"` // in the order run
}

// OrderingMode is what the windows of one mode measured together.
type OrderingMode struct {
	Windows       int                `json:"windows"`
	Orders        int                `json:"orders"` // accepted under load; each one checked paid
	Errors        int                `json:"errors"`
	Seconds       float64            `json:"held_s"`
	CPUMsPerOrder map[string]float64 `json:"cpu_ms_per_order"` // each part's CPU under load over the orders
	CPUMsSum      float64            `json:"cpu_ms_per_order_sum"`
	CoresBusy     float64            `json:"cores_busy_fraction"`
	IdleCPUMsPerS map[string]float64 `json:"idle_cpu_ms_per_s"` // each part's CPU a second at rest
	// MarginalMsPerOrder is each part's CPU a second under load less at
	// rest, over the orders a second.
	MarginalMsPerOrder map[string]float64 `json:"marginal_cpu_ms_per_order"`
	MarginalSum        float64            `json:"marginal_cpu_ms_per_order_sum"`
	Latency            Lat                `json:"post_latency"`
	PostToPaid         Lat                `json:"post_to_paid_latency"`
}

// OrderingWindow is one window of the step, to show how far two windows of
// one mode differ: the noise the cost stands against.
type OrderingWindow struct {
	Ordering      string  `json:"ordering"` // on or off
	Orders        int     `json:"orders"`
	Errors        int     `json:"errors"`
	CPUMsSum      float64 `json:"cpu_ms_per_order_sum"`
	MarginalSum   float64 `json:"marginal_cpu_ms_per_order_sum"`
	IdleCPUMsPerS float64 `json:"idle_cpu_ms_per_s"`
	PostP99       float64 `json:"post_p99_ms"`
	RestartS      float64 `json:"restart_s"` // how long the stack took to restart before it
}

// modeTotals adds up a mode's windows.
type modeTotals struct {
	windows, orders, errors int
	over, idleOver          time.Duration
	cpu, idle               map[string]time.Duration // each part's CPU under load and at rest
	post, paid              []time.Duration
}

// add counts a window under load, one at rest, and the paid latencies of
// the orders of the first.
func (m *modeTotals) add(load, rest window, paid []time.Duration) {
	if m.cpu == nil {
		m.cpu, m.idle = map[string]time.Duration{}, map[string]time.Duration{}
	}
	for name, t := range load.after {
		m.cpu[name] += t - load.before[name]
	}
	for name, t := range rest.after {
		m.idle[name] += t - rest.before[name]
	}
	m.windows++
	m.orders += len(load.res.ids)
	m.errors += len(load.res.errors) + load.res.refused + load.res.noAnswer
	m.over += load.res.duration
	m.idleOver += rest.res.duration
	m.post = append(m.post, load.res.latency...)
	m.paid = append(m.paid, paid...)
}

// result is the mode's figures over its windows together: the average CPU
// per order as the orders step's hold takes it (cpuPerOrder), the marginal
// as its slope (marginalCPU) between the load and rest.
func (m *modeTotals) result(cores int) OrderingMode {
	r := OrderingMode{Windows: m.windows, Orders: m.orders, Errors: m.errors, Seconds: m.over.Seconds(),
		Latency: summarize(m.post), PostToPaid: summarize(m.paid)}
	none := map[string]time.Duration{}
	r.CPUMsPerOrder, r.CoresBusy = cpuPerOrder(none, m.cpu, m.orders, m.over, cores)
	r.CPUMsSum = sumMs(r.CPUMsPerOrder)
	if m.orders > 0 && m.idleOver > 0 {
		r.IdleCPUMsPerS = cpuPerSecond(none, m.idle, m.idleOver)
		r.MarginalMsPerOrder, r.MarginalSum = marginalCPU(cpuPerSecond(none, m.cpu, m.over), r.IdleCPUMsPerS,
			float64(m.orders)/m.over.Seconds(), 0)
	}
	return r
}

// ordering runs the step.
func (b *bench) ordering(ctx context.Context) error {
	o := &b.r.Ordering
	o.Rate, o.HeldS = b.sz.OrderingRate, b.sz.OrderingHold.Seconds()
	o.WarmupS, o.IdleS = b.sz.OrderingWarmup.Seconds(), b.sz.OrderingIdle.Seconds()
	totals := map[bool]*modeTotals{true: {}, false: {}}
	for i, on := range orderingWindows {
		w, err := b.orderingWindow(ctx, i+1, on, totals[on])
		if err != nil {
			return err
		}
		o.Windows = append(o.Windows, w)
	}
	o.On, o.Off = totals[true].result(b.r.Cores), totals[false].result(b.r.Cores)
	if o.Off.CPUMsSum > 0 {
		o.CostPct = 100 * (o.On.CPUMsSum - o.Off.CPUMsSum) / o.Off.CPUMsSum
	}
	if o.Off.MarginalSum > 0 {
		o.MarginalCostPct = 100 * (o.On.MarginalSum - o.Off.MarginalSum) / o.Off.MarginalSum
	}
	fmt.Printf("bench: ordering costs %+.1f%% CPU per order on average (on %.2f ms, off %.2f ms), %+.1f%% at the margin (on %.2f ms, off %.2f ms)\n",
		o.CostPct, o.On.CPUMsSum, o.Off.CPUMsSum, o.MarginalCostPct, o.On.MarginalSum, o.Off.MarginalSum)
	return nil
}

// orderingWindow restarts the stack in the mode, warms it up at the rate,
// lets it settle, measures a hold, checks that every order was paid and
// numbered (or not) as the mode says, lets it settle again and measures it
// at rest.
func (b *bench) orderingWindow(ctx context.Context, n int, on bool, t *modeTotals) (OrderingWindow, error) {
	mode := map[bool]string{true: "on", false: "off"}[on]
	ow := OrderingWindow{Ordering: mode}
	b.peakRSS() // the processes' peaks go with them
	env := map[string]string{}
	if !on {
		env["DATABASE_URL"] = postgres.WithParam(b.dbURL, "dabba.ordering", "off")
	}
	began := time.Now()
	if err := b.restart(ctx, env); err != nil {
		return ow, fmt.Errorf("restart with ordering %s: %w", mode, err)
	}
	ow.RestartS = time.Since(began).Seconds()

	rate, tag := b.sz.OrderingRate, fmt.Sprintf("ordering-%s%d", mode, n)
	warm := openLoop(ctx, tag+"-warm", rate, ordersFor(rate, b.sz.OrderingWarmup))
	if err := b.waitSettled(ctx, 10*time.Minute); err != nil {
		return ow, err
	}
	profiled := b.profileFor(ctx, min(10*time.Second, b.sz.OrderingHold), "-"+tag)
	load := b.measuredLoop(ctx, tag, rate, b.sz.OrderingHold)
	<-profiled
	ids := append(append([]string{}, warm.ids...), load.res.ids...)
	if err := b.waitEffects(ctx, ids, 10*time.Minute); err != nil {
		b.r.Lost = append(b.r.Lost, fmt.Sprintf("ordering %s, window %d: %v", mode, n, err))
	}
	paid, err := b.sinceCreated(ctx, paidQuery, load.res.ids)
	if err != nil {
		return ow, err
	}
	if err := b.checkNumbered(ctx, on, ids); err != nil {
		return ow, fmt.Errorf("window %d: %w", n, err)
	}
	if err := b.waitSettled(ctx, 10*time.Minute); err != nil {
		return ow, err
	}
	rest := b.measuredLoop(ctx, "", 0, b.sz.OrderingIdle)
	t.add(load, rest, paid)

	var alone modeTotals
	alone.add(load, rest, nil)
	one := alone.result(b.r.Cores)
	ow.Orders, ow.Errors, ow.CPUMsSum, ow.MarginalSum = one.Orders, one.Errors, one.CPUMsSum, one.MarginalSum
	ow.IdleCPUMsPerS, ow.PostP99 = sumMs(one.IdleCPUMsPerS), one.Latency.P99
	fmt.Printf("bench: ordering %s, window %d (stack restarted in %.1f s): %d orders, %d errors, CPU per order %.2f ms on average, %.2f ms at the margin (%.0f ms/s at rest), POST %s\n",
		mode, n, ow.RestartS, ow.Orders, ow.Errors, ow.CPUMsSum, ow.MarginalSum, ow.IdleCPUMsPerS, one.Latency)
	return ow, nil
}

// numberedQuery counts, of a set of orders, those the outbox numbered
// (order_event_seq has a row for each order it numbered events of) and
// those the payment consumer took the ordered way (a cursor).
const numberedQuery = `
	SELECT (SELECT count(*) FROM order_event_seq WHERE order_id = ANY($1::uuid[])),
	  (SELECT count(*) FROM order_cursors WHERE consumer = $2 AND order_id = ANY($1::uuid[]))`

// checkNumbered fails unless the stack ran in the mode asked for: with
// ordering on, every order numbered and in the payment consumer's
// cursors; off, none. A mode that did not take would make the cost zero.
func (b *bench) checkNumbered(ctx context.Context, on bool, ids []string) error {
	var numbered, cursors int
	if err := b.db.QueryRow(ctx, numberedQuery, ids, broker.QueuePayment).Scan(&numbered, &cursors); err != nil {
		return fmt.Errorf("check the ordering mode: %w", err)
	}
	want := 0
	if on {
		want = len(ids)
	}
	if numbered != want || cursors != want {
		return fmt.Errorf("ordering %s: of %d orders %d numbered by the outbox and %d in the payment consumer's cursors, want %d "+
			"(is dabba.ordering set for the database, or in DATABASE_URL?)",
			map[bool]string{true: "on", false: "off"}[on], len(ids), numbered, cursors, want)
	}
	return nil
}

// print writes the step's rows of the table.
func (o *OrderingResults) print(tw io.Writer, quick bool) {
	var avg, marg []string
	for _, w := range o.Windows {
		avg = append(avg, fmt.Sprintf("%s %.2f", w.Ordering, w.CPUMsSum))
		marg = append(marg, fmt.Sprintf("%s %.2f", w.Ordering, w.MarginalSum))
	}
	fmt.Fprintf(tw, "ordering: cost in CPU per order, (on − off) / off, at %d/s (%d windows of %.0f s after %.0f s warm-up, %.0f s at rest%s)\t%+.1f%% on average, %+.1f%% at the margin\t\t\n",
		o.Rate, len(o.Windows), o.HeldS, o.WarmupS, o.IdleS, map[bool]string{true: "; quick: noise"}[quick], o.CostPct, o.MarginalCostPct)
	fmt.Fprintf(tw, "ordering: each window's CPU ms per order, on average; at the margin\t%s; %s\t\t\n", strings.Join(avg, ", "), strings.Join(marg, ", "))
	for _, m := range []struct {
		name string
		OrderingMode
	}{{"on", o.On}, {"off", o.Off}} {
		fmt.Fprintf(tw, "ordering %s: orders / errors; average CPU ms per order, rest included (%.0f%% of all cores busy)\t%d / %d; %s\t\t\n",
			m.name, 100*m.CoresBusy, m.Orders, m.Errors, withSum(m.CPUMsPerOrder))
		fmt.Fprintf(tw, "ordering %s: marginal CPU ms per order (over %.0f ms/s at rest)\t%s\t\t\n",
			m.name, sumMs(m.IdleCPUMsPerS), withSum(m.MarginalMsPerOrder))
	}
	fmt.Fprintf(tw, "ordering on / off: POST p99\t%.1f / %.1f ms\t\t\n", o.On.Latency.P99, o.Off.Latency.P99)
	fmt.Fprintf(tw, "ordering on / off: POST → paid p99\t%.1f / %.1f ms\t\t\n", o.On.PostToPaid.P99, o.Off.PostToPaid.P99)
}
