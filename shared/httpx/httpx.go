// Package httpx holds the HTTP plumbing every service shares: strict JSON
// decoding, problem+json errors (RFC 9457), health handlers and request logs.
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"go.uber.org/zap"
)

// Problem is an RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Field names the offending request field, when there is one.
	Field string `json:"field,omitempty"`
	// RetryAfter, in seconds, is sent as the Retry-After header.
	RetryAfter int `json:"-"`
}

// Error makes a Problem usable as an error.
func (p *Problem) Error() string {
	if p.Field != "" {
		return fmt.Sprintf("%s: %s", p.Field, p.Detail)
	}
	return p.Detail
}

// NewProblem returns a problem with status and a detail.
func NewProblem(status int, detail string) *Problem {
	return &Problem{Title: http.StatusText(status), Status: status, Detail: detail}
}

// Unavailable returns the 503 a handler answers while a dependency it
// needs (the database) cannot be reached: what is unavailable, and a
// Retry-After of 2 s so that clients come back rather than give up.
func Unavailable(what string) *Problem {
	p := NewProblem(http.StatusServiceUnavailable, what+" is unavailable; retry shortly")
	p.RetryAfter = 2
	return p
}

// FieldProblem returns a 400 problem naming the field at fault.
func FieldProblem(field, detail string) *Problem {
	p := NewProblem(http.StatusBadRequest, detail)
	p.Field = field
	return p
}

// Error writes err as a problem response. A *Problem is sent as it is; any
// other error is unexpected, logged, and answered with a bare 500 so no
// internals leak.
func Error(w http.ResponseWriter, r *http.Request, log *zap.Logger, err error) {
	var p *Problem
	if !errors.As(err, &p) {
		log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		p = NewProblem(http.StatusInternalServerError, "internal error")
	}
	WriteProblem(w, p)
}

// WriteProblem writes p as application/problem+json.
func WriteProblem(w http.ResponseWriter, p *Problem) {
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(p.RetryAfter))
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// Encode writes v as JSON with status.
func Encode(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Decode reads a JSON request body of at most maxBytes into a T, rejecting a
// wrong content type (415), an oversized body (413), malformed JSON, unknown
// fields and trailing data (400, naming the field where there is one).
func Decode[T any](w http.ResponseWriter, r *http.Request, maxBytes int64) (T, error) {
	var v T
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return v, NewProblem(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		}
	} else {
		return v, NewProblem(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return v, NewProblem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", maxBytes))
		}
		return v, NewProblem(http.StatusBadRequest, "could not read body")
	}
	return v, DecodeJSON(body, &v)
}

// DecodeJSON strictly decodes one JSON value from body into v, turning every
// failure into a 400 problem that says where the fault is.
func DecodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonProblem(err)
	}
	if dec.More() {
		return NewProblem(http.StatusBadRequest, "body must hold a single JSON value")
	}
	return nil
}

func jsonProblem(err error) *Problem {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return NewProblem(http.StatusBadRequest, "body is empty")
	case errors.As(err, &syntax):
		return NewProblem(http.StatusBadRequest, fmt.Sprintf("malformed JSON at byte %d", syntax.Offset))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return NewProblem(http.StatusBadRequest, "malformed JSON: unexpected end")
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(body)"
		}
		return FieldProblem(field, fmt.Sprintf("must be a %s", typ.Type))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return FieldProblem(name, "unknown field")
	}
	return NewProblem(http.StatusBadRequest, "malformed JSON: "+err.Error())
}

// Check is one readiness check: nil means ready.
type Check func(r *http.Request) error

// Healthz answers 200 while the process is alive.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Encode(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// Readyz answers 200 when every check passes and 503 naming the failures
// otherwise.
func Readyz(checks map[string]Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, failures := http.StatusOK, map[string]string{}
		for name, check := range checks {
			if err := check(r); err != nil {
				status = http.StatusServiceUnavailable
				failures[name] = err.Error()
			}
		}
		if status == http.StatusOK {
			Encode(w, status, map[string]string{"status": "ready"})
			return
		}
		Encode(w, status, map[string]any{"status": "unavailable", "failures": failures})
	})
}
