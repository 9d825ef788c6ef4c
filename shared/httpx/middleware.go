package httpx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-chi/httprate"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/trace"
)

// LogRequests logs each request once it is answered, at debug level for
// success and warn for server errors, so production logs carry what matters.
func LogRequests(log *zap.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			start := time.Now()
			next.ServeHTTP(ww, r)
			level := zap.DebugLevel
			if ww.Status() >= 500 {
				level = zap.WarnLevel
			}
			if ce := log.Check(level, "http request"); ce != nil {
				ce.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Int("status", ww.Status()),
					zap.Duration("took", time.Since(start)), zap.String("trace_id", trace.TraceID(trace.FromContext(r.Context()))))
			}
		})
	}
}

// Recoverer turns a panicking handler into a logged 500 problem.
func Recoverer(log *zap.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					log.Error("handler panic", zap.Any("panic", v), zap.String("path", r.URL.Path), zap.Stack("stack"))
					WriteProblem(w, NewProblem(http.StatusInternalServerError, "internal error"))
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// LimitPerIP answers a client address's requests beyond perSecond in any
// one-second window with a 429 problem and Retry-After, so one flooding
// client cannot crowd out the rest; 0 turns it off. The address is the
// connection's own: behind a load balancer every client shares the
// balancer's, so limit there instead and turn this off.
func LimitPerIP(perSecond int) func(http.Handler) http.Handler {
	if perSecond <= 0 {
		return func(next http.Handler) http.Handler { return next }
	}
	return httprate.LimitBy(perSecond, time.Second, func(r *http.Request) (string, error) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		return httprate.CanonicalizeIP(host), nil
	}, httprate.WithLimitHandler(func(w http.ResponseWriter, _ *http.Request) {
		p := NewProblem(http.StatusTooManyRequests, fmt.Sprintf("more than %d requests a second from this address", perSecond))
		p.RetryAfter = 1
		WriteProblem(w, p)
	}))
}

// ReadBody reads each request's whole body, at most maxBytes (413 past
// it), before passing the request on with its body in memory. Put before
// Shed, it makes a request take an in-flight slot only once it has
// arrived: a client sending its body slowly holds a connection (until the
// server's read timeout), never a slot that others wait for.
func ReadBody(maxBytes int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body == nil || r.Body == http.NoBody {
				next.ServeHTTP(w, r)
				return
			}
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
			var tooBig *http.MaxBytesError
			switch {
			case errors.As(err, &tooBig):
				WriteProblem(w, NewProblem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", maxBytes)))
				return
			case err != nil:
				WriteProblem(w, NewProblem(http.StatusBadRequest, "could not read body"))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			next.ServeHTTP(w, r)
		})
	}
}

// Shed answers at once with a 503 problem and Retry-After when maxInFlight
// requests are already being served, instead of letting requests queue for
// a database connection until they time out: under a burst past what the
// service can take, the requests it accepts stay fast and the rest learn
// at once to come back. 0 turns it off.
func Shed(maxInFlight int) func(http.Handler) http.Handler {
	if maxInFlight <= 0 {
		return func(next http.Handler) http.Handler { return next }
	}
	slots := make(chan struct{}, maxInFlight)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
				next.ServeHTTP(w, r)
			default:
				p := NewProblem(http.StatusServiceUnavailable, "too many requests in flight; retry shortly")
				p.RetryAfter = 1
				WriteProblem(w, p)
			}
		})
	}
}
