package main

import (
	"slices"
	"testing"
)

func TestParseSteps(t *testing.T) {
	tests := []struct {
		give    string
		want    []string
		wantErr bool
	}{
		{give: "", want: steps},
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
