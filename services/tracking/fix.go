package main

import (
	"fmt"
	"math"
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

// decodeFix parses and checks one fix, returning a 400 problem naming the
// field at fault.
func decodeFix(body []byte, now time.Time) (Fix, error) {
	if len(body) > maxFixBytes {
		return Fix{}, httpx.NewProblem(413, fmt.Sprintf("a fix is at most %d bytes", maxFixBytes))
	}
	var r fixRequest
	if err := httpx.DecodeJSON(body, &r); err != nil {
		return Fix{}, err
	}
	checks := []struct {
		name     string
		v        *float64
		min, max float64
	}{{"lat", r.Lat, -90, 90}, {"lng", r.Lng, -180, 180}, {"heading", r.Heading, 0, 360}, {"speed_kmh", r.SpeedKmh, 0, 400}}
	for _, c := range checks {
		switch {
		case c.v == nil:
			return Fix{}, httpx.FieldProblem(c.name, "is required")
		case math.IsNaN(*c.v) || math.IsInf(*c.v, 0) || *c.v < c.min || *c.v > c.max:
			return Fix{}, httpx.FieldProblem(c.name, fmt.Sprintf("must be between %g and %g", c.min, c.max))
		}
	}
	switch {
	case r.Seq == nil:
		return Fix{}, httpx.FieldProblem("seq", "is required")
	case *r.Seq < 1:
		return Fix{}, httpx.FieldProblem("seq", "must be positive")
	case r.TS == nil || r.TS.IsZero():
		return Fix{}, httpx.FieldProblem("ts", "is required (RFC 3339)")
	case r.TS.After(now.Add(maxClockSkew)):
		return Fix{}, httpx.FieldProblem("ts", "is in the future")
	}
	return Fix{Lat: *r.Lat, Lng: *r.Lng, Heading: *r.Heading, SpeedKmh: *r.SpeedKmh, Seq: *r.Seq, TS: r.TS.UTC()}, nil
}

// validRiderID reports whether id can be a rider id: it becomes part of a
// routing key ("rider.<id>"), so no dots or wildcards.
func validRiderID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, ".*#/ \x00")
}
