package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dabba/dabba/shared/httpx"
)

// maxFixBytes bounds one fix on the wire (HTTP body or WebSocket frame).
const maxFixBytes = 1 << 10

// maxClockSkew is how far in the future a fix's timestamp may be.
const maxClockSkew = 30 * time.Second

// Fix is one GPS fix from a rider. Seq rises with each fix of a rider; it is
// what orders fixes, since the broker may hand them over out of order.
type Fix struct {
	RiderID  string    `json:"rider_id,omitempty"`
	Lat      float64   `json:"lat"`
	Lng      float64   `json:"lng"`
	Heading  float64   `json:"heading"`
	SpeedKmh float64   `json:"speed_kmh"`
	Seq      int64     `json:"seq"`
	TS       time.Time `json:"ts"`

	// When the fix reached an ingest (rx) and when that ingest published
	// it (px), in Unix nanoseconds of the ingest's clock: where a fix's
	// time goes (metrics.go). They travel between instances but never to
	// a customer.
	RX int64 `json:"rx,omitempty"`
	PX int64 `json:"px,omitempty"`
}

// fixRequest is a fix as a rider sends it; pointers tell missing from zero.
type fixRequest struct {
	Lat      *float64   `json:"lat"`
	Lng      *float64   `json:"lng"`
	Heading  *float64   `json:"heading"`
	SpeedKmh *float64   `json:"speed_kmh"`
	Seq      *int64     `json:"seq"`
	TS       *time.Time `json:"ts"`
}

// fixFields is a parsed fix before it is checked; has says which fields
// the body held.
type fixFields struct {
	num [4]float64 // lat, lng, heading, speed_kmh
	seq int64
	ts  time.Time
	has uint8 // bit i: num[i]; bit 4: seq; bit 5: ts
}

const (
	hasSeq = 1 << 4
	hasTS  = 1 << 5
)

// numFields are the number fields of a fix, in fixFields.num's order, with
// their bounds.
var numFields = [4]struct {
	name     string
	min, max float64
}{{"lat", -90, 90}, {"lng", -180, 180}, {"heading", 0, 360}, {"speed_kmh", 0, 400}}

// decodeFix parses and checks one fix, returning a 400 problem naming the
// field at fault. Every fix a rider sends goes through here (20,000 a
// second at city scale), so a well-formed one is read by parseFix, which
// allocates nothing; anything it does not take is read again by the
// standard decoder, which says what is wrong.
func decodeFix(body []byte, now time.Time) (Fix, error) {
	if len(body) > maxFixBytes {
		return Fix{}, httpx.NewProblem(413, fmt.Sprintf("a fix is at most %d bytes", maxFixBytes))
	}
	ff, ok := parseFix(body)
	if !ok {
		var err error
		if ff, err = decodeFixSlowly(body); err != nil {
			return Fix{}, err
		}
	}
	return ff.check(now)
}

// decodeFixSlowly reads body with encoding/json, strictly (unknown fields
// and trailing data refused).
func decodeFixSlowly(body []byte) (fixFields, error) {
	var r fixRequest
	if err := httpx.DecodeJSON(body, &r); err != nil {
		return fixFields{}, err
	}
	var ff fixFields
	for i, v := range []*float64{r.Lat, r.Lng, r.Heading, r.SpeedKmh} {
		if v != nil {
			ff.num[i], ff.has = *v, ff.has|1<<i
		}
	}
	if r.Seq != nil {
		ff.seq, ff.has = *r.Seq, ff.has|hasSeq
	}
	if r.TS != nil {
		ff.ts, ff.has = *r.TS, ff.has|hasTS
	}
	return ff, nil
}

// check applies the rules every fix must meet.
func (ff fixFields) check(now time.Time) (Fix, error) {
	for i, c := range numFields {
		v := ff.num[i]
		switch {
		case ff.has&(1<<i) == 0:
			return Fix{}, httpx.FieldProblem(c.name, "is required")
		case math.IsNaN(v) || math.IsInf(v, 0) || v < c.min || v > c.max:
			return Fix{}, httpx.FieldProblem(c.name, fmt.Sprintf("must be between %g and %g", c.min, c.max))
		}
	}
	switch {
	case ff.has&hasSeq == 0:
		return Fix{}, httpx.FieldProblem("seq", "is required")
	case ff.seq < 1:
		return Fix{}, httpx.FieldProblem("seq", "must be positive")
	case ff.has&hasTS == 0 || ff.ts.IsZero():
		return Fix{}, httpx.FieldProblem("ts", "is required (RFC 3339)")
	case ff.ts.After(now.Add(maxClockSkew)):
		return Fix{}, httpx.FieldProblem("ts", "is in the future")
	}
	return Fix{Lat: ff.num[0], Lng: ff.num[1], Heading: ff.num[2], SpeedKmh: ff.num[3], Seq: ff.seq, TS: ff.ts.UTC()}, nil
}

// parseFix reads a fix as riders' apps send it: one flat object of the six
// known keys, each at most once, numbers in JSON's grammar, the time a
// string without escapes. It reports false for anything else (whatever
// the standard decoder might still make of it), so it never accepts what
// decodeFixSlowly would refuse, nor reads a field differently (FuzzParseFix).
func parseFix(b []byte) (ff fixFields, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return ff, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return ff, skipSpace(b, i+1) == len(b)
	}
	for {
		// A key: a plain string.
		end := scanPlainString(b, i)
		if end < 0 {
			return ff, false
		}
		key := b[i+1 : end]
		i = skipSpace(b, end+1)
		if i >= len(b) || b[i] != ':' {
			return ff, false
		}
		i = skipSpace(b, i+1)
		var bit uint8
		switch string(key) {
		case "lat", "lng", "heading", "speed_kmh":
			n := 0
			for string(key) != numFields[n].name {
				n++
			}
			bit = 1 << n
			j := scanNumber(b, i)
			if j < 0 {
				return ff, false
			}
			v, err := strconv.ParseFloat(string(b[i:j]), 64)
			if err != nil {
				return ff, false
			}
			ff.num[n], i = v, j
		case "seq":
			bit = hasSeq
			j := scanNumber(b, i)
			if j < 0 {
				return ff, false
			}
			v, err := strconv.ParseInt(string(b[i:j]), 10, 64) // refuses fractions and exponents, as the decoder does
			if err != nil {
				return ff, false
			}
			ff.seq, i = v, j
		case "ts":
			bit = hasTS
			j := scanPlainString(b, i)
			if j < 0 {
				return ff, false
			}
			// The decoder's own reading of a time: strict RFC 3339.
			if err := ff.ts.UnmarshalJSON(b[i : j+1]); err != nil {
				return ff, false
			}
			i = j + 1
		default:
			return ff, false
		}
		if ff.has&bit != 0 {
			return ff, false // twice: the decoder would keep the last; leave it to it
		}
		ff.has |= bit
		i = skipSpace(b, i)
		if i >= len(b) {
			return ff, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return ff, skipSpace(b, i+1) == len(b)
		default:
			return ff, false
		}
	}
}

// scanPlainString returns the index of the closing quote of the string
// starting at b[i], or -1 when no string starts there or it holds an
// escape, a control character or anything but ASCII (left to the standard
// decoder).
func scanPlainString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i
		case c == '\\' || c < 0x20 || c >= 0x80:
			return -1
		}
	}
	return -1
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanNumber returns the end of the JSON number starting at b[i], or -1
// when none starts there: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func scanNumber(b []byte, i int) int {
	digits := func(i int) int {
		j := i
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	default:
		if i = digits(i); i < 0 {
			return -1
		}
	}
	if i < len(b) && b[i] == '.' {
		if i = digits(i + 1); i < 0 {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i = digits(i); i < 0 {
			return -1
		}
	}
	return i
}

// validRiderID reports whether id can be a rider id: it becomes part of a
// routing key ("rider.<id>"), so no dots or wildcards.
func validRiderID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, ".*#/ \x00")
}
