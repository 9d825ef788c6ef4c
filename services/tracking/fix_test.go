package main

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/dabba/dabba/shared/httpx"
)

func TestDecodeFix(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	good := `{"lat":19.02,"lng":72.84,"heading":90,"speed_kmh":22.5,"seq":7,"ts":"2026-11-23T11:59:59Z"}`
	tests := []struct {
		name, give, wantField string
		wantStatus            int
	}{
		{"OK", good, "", 0},
		{"ErrLatRange", strings.Replace(good, "19.02", "91", 1), "lat", 400},
		{"ErrLngMissing", strings.Replace(good, `"lng":72.84,`, "", 1), "lng", 400},
		{"ErrHeading", strings.Replace(good, `"heading":90`, `"heading":-1`, 1), "heading", 400},
		{"ErrSeqZero", strings.Replace(good, `"seq":7`, `"seq":0`, 1), "seq", 400},
		{"ErrFuture", strings.Replace(good, "11:59:59", "12:05:00", 1), "ts", 400},
		{"ErrUnknownField", strings.Replace(good, `"seq"`, `"sequence"`, 1), "sequence", 400},
		{"ErrNotJSON", `lat=1`, "", 400},
		{"ErrHuge", `{"lat":` + strings.Repeat("1", 2000) + `}`, "", 413},
		{"ErrNaNAsString", strings.Replace(good, "19.02", `"NaN"`, 1), "lat", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := decodeFix([]byte(tt.give), now)
			if tt.wantStatus == 0 {
				if err != nil || f.Seq != 7 || f.Lat != 19.02 {
					t.Fatalf("decodeFix = %+v, %v", f, err)
				}
				return
			}
			var p *httpx.Problem
			if !errors.As(err, &p) || p.Status != tt.wantStatus || p.Field != tt.wantField {
				t.Fatalf("decodeFix error = %v (%+v), want %d on %q", err, p, tt.wantStatus, tt.wantField)
			}
		})
	}
}

// FuzzDecodeFix: no input panics the fix decoder, every rejection is a
// problem naming what is wrong, and nothing out of range is accepted. The
// seeds run with go test; make fuzz explores from them.
func FuzzDecodeFix(f *testing.F) {
	for _, seed := range []string{
		`{"lat":19.02,"lng":72.84,"heading":90,"speed_kmh":22.5,"seq":7,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":-90,"lng":-180,"heading":0,"speed_kmh":0,"seq":1,"ts":"2026-11-23T11:59:59.123456789+05:30"}`,
		`{"lat":1e309,"lng":0,"heading":0,"speed_kmh":0,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":"NaN","lng":0,"heading":0,"speed_kmh":0,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":1,"lng":2,"heading":3,"speed_kmh":4,"seq":9223372036854775808,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":1,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"9999-12-31T23:59:59Z"}`,
		`{"lat":1,"lat":2,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":1,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59Z"} {}`,
		`{"seq":-9223372036854775808}`,
		`null`, `[]`, `""`, `{`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		fix, err := decodeFix(body, now)
		if err != nil {
			var p *httpx.Problem
			if !errors.As(err, &p) || p.Status < 400 || p.Status > 499 || p.Detail == "" {
				t.Fatalf("rejection %v is not a clear client error", err)
			}
			return
		}
		for _, v := range []float64{fix.Lat, fix.Lng, fix.Heading, fix.SpeedKmh} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("accepted a non-finite number: %+v", fix)
			}
		}
		if fix.Lat < -90 || fix.Lat > 90 || fix.Lng < -180 || fix.Lng > 180 || fix.Seq < 1 || fix.TS.After(now.Add(maxClockSkew)) {
			t.Fatalf("accepted %+v", fix)
		}
	})
}

// FuzzParseFix holds the fast reader to the standard decoder: whatever
// parseFix takes, decodeFixSlowly takes too, and reads alike.
func FuzzParseFix(f *testing.F) {
	for _, seed := range []string{
		`{"lat":19.02,"lng":72.84,"heading":90,"speed_kmh":22.5,"seq":7,"ts":"2026-11-23T11:59:59Z"}`,
		` { "ts" : "2026-11-23T11:59:59.123+05:30" , "seq":1,"speed_kmh":0,"heading":0,"lng":-0,"lat":-1.5e-3 } `,
		`{"lat":01,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":1.,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":0x1p3,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59Z"}`,
		`{"LAT":1,"lng":2,"heading":3,"speed_kmh":4,"seq":1e2,"ts":"2026-11-23T11:59:59Z"}`,
		`{"lat":1,"lng":2,"heading":3,"speed_kmh":4,"seq":1,"ts":"2026-11-23T11:59:59\u005a"}`,
		`{"lat":1,"lng":2}`, `{}`, `{"lat":1,}`, `{"lat":1e400}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := parseFix(body)
		if !ok {
			return
		}
		slow, err := decodeFixSlowly(body)
		if err != nil {
			t.Fatalf("parseFix took %q, the decoder refuses it: %v", body, err)
		}
		same := fast.has == slow.has && fast.seq == slow.seq && fast.ts.Equal(slow.ts) && fast.ts.Location().String() == slow.ts.Location().String()
		for i := range fast.num {
			same = same && math.Float64bits(fast.num[i]) == math.Float64bits(slow.num[i])
		}
		if !same {
			t.Fatalf("%q: parseFix read %+v, the decoder %+v", body, fast, slow)
		}
	})
}

func TestParseFixTakesWhatAppsSend(t *testing.T) {
	for _, body := range []string{
		`{"lat":19.02,"lng":72.84,"heading":90,"speed_kmh":22.5,"seq":7,"ts":"2026-11-23T11:59:59Z"}`,
		"{\n  \"seq\": 7, \"ts\": \"2026-11-23T11:59:59.123456789+05:30\",\n  \"lat\": -19, \"lng\": 1e1, \"heading\": 0, \"speed_kmh\": 0\n}\n",
	} {
		if _, ok := parseFix([]byte(body)); !ok {
			t.Errorf("parseFix refused %q: every fix would take the slow way", body)
		}
	}
}

func BenchmarkDecodeFix(b *testing.B) {
	body := []byte(`{"lat":19.021234,"lng":72.841234,"heading":90,"speed_kmh":22.5,"seq":7,"ts":"2026-11-23T11:59:59.123456Z"}`)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeFix(body, now); err != nil {
			b.Fatal(err)
		}
	}
}
