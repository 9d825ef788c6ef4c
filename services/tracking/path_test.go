package main

import (
	"testing"
)

func TestThin(t *testing.T) {
	line := func(n int, f func(i int) (lat, lng float64)) []PathPoint {
		ps := make([]PathPoint, n)
		for i := range ps {
			ps[i].Lat, ps[i].Lng = f(i)
			ps[i].Seq = int64(i + 1)
		}
		return ps
	}
	// An L: north 100 points, then east 100; the corner must survive.
	ell := line(201, func(i int) (float64, float64) {
		if i <= 100 {
			return 19 + float64(i)*1e-4, 72.8
		}
		return 19.01, 72.8 + float64(i-100)*1e-4
	})
	tests := []struct {
		name      string
		give      []PathPoint
		limit     int
		wantLen   int
		wantSeqs  []int64 // must be among the points kept
		wantOrder bool
	}{
		{name: "UnderTheLimit", give: ell[:10], limit: 20, wantLen: 10},
		{name: "KeepsEndsAndCorner", give: ell, limit: 3, wantLen: 3, wantSeqs: []int64{1, 101, 201}},
		{name: "AtMostLimit", give: ell, limit: 50, wantLen: 50, wantSeqs: []int64{1, 101, 201}, wantOrder: true},
		{name: "Empty", give: nil, limit: 5, wantLen: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := thin(tt.give, tt.limit)
			if len(got) != tt.wantLen {
				t.Fatalf("%d points, want %d", len(got), tt.wantLen)
			}
			kept := map[int64]bool{}
			for i, p := range got {
				kept[p.Seq] = true
				if i > 0 && got[i-1].Seq >= p.Seq {
					t.Fatalf("out of order: seq %d after %d", p.Seq, got[i-1].Seq)
				}
			}
			for _, s := range tt.wantSeqs {
				if !kept[s] {
					t.Errorf("seq %d dropped; kept %v", s, got)
				}
			}
		})
	}
}
