// Package trace carries a W3C trace context (the traceparent header,
// https://www.w3.org/TR/trace-context/) from an HTTP request through the
// outbox and RabbitMQ into every consumer's logs. It only propagates ids:
// Dabba records no spans, so a hand-written 55-character format beats
// pulling in OpenTelemetry.
package trace

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
)

// Header is the name of the HTTP and AMQP header that carries a traceparent.
const Header = "traceparent"

// size is the length of a version-00 traceparent:
// "00-" trace-id (32) "-" parent-id (16) "-" flags (2).
const size = 55

// Valid reports whether s is a traceparent Dabba can continue: version 00
// exactly, or a later version whose first 55 characters follow version 00's
// layout (as the specification asks of a parser). Ids must be lowercase hex
// and not all zeros.
func Valid(s string) bool {
	if len(s) < size || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	if !lowerHex(s[:2]) || s[:2] == "ff" || (s[:2] == "00" && len(s) != size) || (len(s) > size && s[size] != '-') {
		return false
	}
	return lowerHex(s[3:35]) && !zeros(s[3:35]) && lowerHex(s[36:52]) && !zeros(s[36:52]) && lowerHex(s[53:55])
}

// TraceID returns the trace-id of a valid traceparent, "" otherwise. It
// does not allocate.
func TraceID(s string) string {
	if !Valid(s) {
		return ""
	}
	return s[3:35]
}

// New starts a trace: a random trace-id and parent-id, flagged sampled.
func New() string {
	var b [size]byte
	copy(b[:], "00-")
	putRandom(b[3:35])
	b[35] = '-'
	putRandom(b[36:52])
	copy(b[52:], "-01")
	return string(b[:])
}

// Child returns a traceparent for a new span in parent's trace: same
// trace-id and flags, a new parent-id. An invalid parent starts a new trace.
func Child(parent string) string {
	if !Valid(parent) {
		return New()
	}
	var b [size]byte
	copy(b[:], "00-")
	copy(b[3:36], parent[3:36])
	putRandom(b[36:52])
	b[52] = '-'
	copy(b[53:], parent[53:55])
	return string(b[:])
}

// putRandom fills dst (an even number of bytes, at most 32) with random
// lowercase hex. math/rand/v2's generator is seeded from the system and is
// plenty for ids that must be unique, not secret.
func putRandom(dst []byte) {
	var raw [16]byte
	n := len(dst) / 2
	for {
		binary.LittleEndian.PutUint64(raw[0:8], rand.Uint64())
		binary.LittleEndian.PutUint64(raw[8:16], rand.Uint64())
		if !allZero(raw[:n]) { // an all-zero id is invalid
			break
		}
	}
	hex.Encode(dst, raw[:n])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func zeros(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

type contextKey struct{}

// NewContext returns ctx carrying traceparent tp: the span the work under
// ctx belongs to. Whatever that work publishes becomes a Child of it.
func NewContext(ctx context.Context, tp string) context.Context {
	return context.WithValue(ctx, contextKey{}, tp)
}

// FromContext returns the traceparent ctx carries, or "".
func FromContext(ctx context.Context) string {
	tp, _ := ctx.Value(contextKey{}).(string)
	return tp
}

// Middleware continues the trace of an incoming traceparent header, or
// starts a new one, and puts the request's span into its context. It echoes
// the span as a traceparent response header so a client can find its
// request in the logs.
func Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tp := Child(r.Header.Get(Header))
		w.Header().Set(Header, tp)
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), tp)))
	})
}
