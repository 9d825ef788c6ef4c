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
		{give: "", want: []string{"ceilings", "memory", "orders", "burst", "locations"}}, // not the soak
		{give: "soak", want: []string{"soak"}},
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
