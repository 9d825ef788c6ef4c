package main

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestParseSteps(t *testing.T) {
	tests := []struct {
		give    string
		want    []string
		wantErr bool
	}{
		{give: "", want: []string{"ceilings", "memory", "orders", "burst", "locations", "ordering"}}, // not the soak
		{give: "soak", want: []string{"soak"}},
		{give: "ordering", want: []string{"ordering"}}, // no ceilings: its figure is a ratio of its own windows
		{give: "locations", want: []string{"locations"}},
		{give: "orders", want: []string{"ceilings", "orders"}},
		{give: "burst, memory", want: []string{"ceilings", "memory", "burst"}},
		{give: "order", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseSteps(tt.give)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseSteps(%q) error = %v, want error %v", tt.give, err, tt.wantErr)
			continue
		}
		var ran []string
		for _, st := range steps {
			if got[st] {
				ran = append(ran, st)
			}
		}
		if !tt.wantErr && !slices.Equal(ran, tt.want) {
			t.Errorf("parseSteps(%q) runs %v, want %v", tt.give, ran, tt.want)
		}
	}
}

func TestParseRates(t *testing.T) {
	tests := []struct {
		give    string
		want    []int
		wantErr bool
	}{
		{give: "300,500, 700", want: []int{300, 500, 700}},
		{give: "300,", wantErr: true},
		{give: "0", wantErr: true},
		{give: "fast", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseRates(tt.give)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("parseRates(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestMarginalCPU(t *testing.T) {
	// rabbitmq spends 100 ms a second idle and 7 ms an order; orders 2 ms
	// an order and nothing idle. The averages would be 9 and 2 ms at
	// 50/s; the slopes must be 7 and 2.
	at := func(rate float64) map[string]float64 {
		return map[string]float64{"rabbitmq": 100 + 7*rate, "orders": 2 * rate}
	}
	per, sum := marginalCPU(at(50), at(12.5), 50, 12.5)
	for name, want := range map[string]float64{"rabbitmq": 7, "orders": 2} {
		if math.Abs(per[name]-want) > 1e-9 {
			t.Errorf("%s: %.3f ms per order, want %.0f", name, per[name], want)
		}
	}
	if math.Abs(sum-9) > 1e-9 {
		t.Errorf("sum %.3f, want 9", sum)
	}
}

func TestCPUPerSecond(t *testing.T) {
	before := map[string]time.Duration{"postgresql": time.Second}
	after := map[string]time.Duration{"postgresql": 3 * time.Second, "bench (load generator)": time.Second}
	got := cpuPerSecond(before, after, 4*time.Second)
	if got["postgresql"] != 500 || got["bench (load generator)"] != 250 {
		t.Errorf("cpuPerSecond = %v, want postgresql 500, bench 250 ms/s", got)
	}
}

func TestModeTotals(t *testing.T) {
	// Two windows of one mode: postgresql used 3 s for 1,000 orders in
	// one and 0.5 s for 500 in the other, 10 s each. Together that is
	// 3.5 s for 1,500 orders, 2.33 ms an order, not the mean of the
	// windows' 3 and 1. At rest it used 100 ms a second; under load 175 ms
	// a second at 75 orders a second: 1 ms an order at the margin.
	win := func(orders int, cpu time.Duration, over time.Duration) window {
		return window{
			res:    loadResult{ids: make([]string, orders), latency: []time.Duration{time.Duration(orders) * time.Microsecond}, duration: over},
			before: map[string]time.Duration{"postgresql": time.Hour},
			after:  map[string]time.Duration{"postgresql": time.Hour + cpu},
		}
	}
	rest := win(0, 100*time.Millisecond, time.Second)
	var m modeTotals
	m.add(win(1000, 3*time.Second, 10*time.Second), rest, []time.Duration{time.Millisecond})
	m.add(win(500, 500*time.Millisecond, 10*time.Second), rest, []time.Duration{2 * time.Millisecond})
	got := m.result(2)
	if got.Windows != 2 || got.Orders != 1500 || got.Seconds != 20 {
		t.Errorf("windows, orders, seconds = %d, %d, %.0f; want 2, 1500, 20", got.Windows, got.Orders, got.Seconds)
	}
	if math.Abs(got.CPUMsSum-3500.0/1500) > 1e-9 || math.Abs(got.CPUMsPerOrder["postgresql"]-3500.0/1500) > 1e-9 {
		t.Errorf("CPU per order = %.3f ms (postgresql %.3f), want 2.333", got.CPUMsSum, got.CPUMsPerOrder["postgresql"])
	}
	if math.Abs(got.CoresBusy-3.5/40) > 1e-9 {
		t.Errorf("cores busy = %.4f, want %.4f", got.CoresBusy, 3.5/40)
	}
	if math.Abs(got.IdleCPUMsPerS["postgresql"]-100) > 1e-9 {
		t.Errorf("at rest %.3f ms/s, want 100", got.IdleCPUMsPerS["postgresql"])
	}
	if math.Abs(got.MarginalSum-1) > 1e-9 || math.Abs(got.MarginalMsPerOrder["postgresql"]-1) > 1e-9 {
		t.Errorf("marginal = %.3f ms (postgresql %.3f), want 1", got.MarginalSum, got.MarginalMsPerOrder["postgresql"])
	}
	if got.Latency.N != 2 || got.PostToPaid.N != 2 || got.PostToPaid.Max != 2 {
		t.Errorf("latencies %v, paid %v: want both windows' (2 each, paid max 2 ms)", got.Latency, got.PostToPaid)
	}
}
