package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/token"
)

// Limits on a rider's stream: a phone sends a fix every 500 ms or so.
const (
	riderRate     = 10 // fixes per second, sustained
	riderBurst    = 20
	maxBadFrames  = 10 // consecutive bad frames before the socket is closed (1008)
	publishTimout = 2 * time.Second
)

// Ingest takes riders' fixes and publishes them to the locations exchange,
// never to a customer directly.
type Ingest struct {
	pub       *broker.Publisher
	positions *PositionWriter
	log       *zap.Logger
}

// publish sends a fix to "locations" as rider.<id>, transient, and notes it
// as the rider's latest position.
func (in *Ingest) publish(ctx context.Context, f Fix) error {
	body, _ := json.Marshal(f)
	ctx, cancel := context.WithTimeout(ctx, publishTimout)
	defer cancel()
	if err := in.pub.Publish(ctx, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: "rider." + f.RiderID,
		Body: body, Transient: true}); err != nil {
		return fmt.Errorf("publish fix: %w", err)
	}
	in.positions.Note(f)
	return nil
}

// bearer returns the request's token: Authorization: Bearer, else ?token=.
func bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		return strings.TrimPrefix(h, "Bearer ")
	}
	return r.URL.Query().Get("token")
}

// authRider checks that the request carries a rider token for the rider in
// its path: 401 without a valid token, 403 for another rider's path.
func authRider(r *http.Request, signer *token.Signer) (string, error) {
	rider := chi.URLParam(r, "rider_id")
	if !validRiderID(rider) {
		return "", httpx.FieldProblem("rider_id", "must be 1 to 128 characters without '.', '*', '#', '/' or spaces")
	}
	sub, err := signer.VerifyRider(bearer(r))
	if err != nil {
		return "", httpx.NewProblem(http.StatusUnauthorized, "a valid rider token is required")
	}
	if sub != rider {
		return "", httpx.NewProblem(http.StatusForbidden, "this token is for another rider")
	}
	return rider, nil
}

// handleRiderLocation handles "POST /v1/riders/{rider_id}/location": one fix.
func handleRiderLocation(log *zap.Logger, in *Ingest, signer *token.Signer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rider, err := authRider(r, signer)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		body, err := readBody(w, r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		f, err := decodeFix(body, time.Now())
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		f.RiderID = rider
		if err := in.publish(r.Context(), f); err != nil {
			log.Warn("fix not published", zap.String("rider_id", rider), zap.Error(err))
			p := httpx.NewProblem(http.StatusServiceUnavailable, "the location feed is unavailable; retry shortly")
			p.RetryAfter = 1
			httpx.WriteProblem(w, p)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return nil, httpx.NewProblem(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFixBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, httpx.NewProblem(http.StatusRequestEntityTooLarge, fmt.Sprintf("a fix is at most %d bytes", maxFixBytes))
	}
	if err != nil {
		return nil, httpx.NewProblem(http.StatusBadRequest, "could not read body")
	}
	return body, nil
}

// handleRiderSocket handles "GET /v1/riders/{rider_id}/ws": a rider's app
// streaming fixes. A bad frame gets an error frame and the stream goes on;
// repeated abuse closes it (1008); an oversized frame closes it (1009).
func handleRiderSocket(log *zap.Logger, in *Ingest, signer *token.Signer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rider, err := authRider(r, signer)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(maxFixBytes)
		ctx := r.Context()
		limiter := rate.NewLimiter(riderRate, riderBurst)
		bad := 0
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return // closed, oversized (1009 sent by the library), or gone
			}
			f, err := decodeFix(data, time.Now())
			if err == nil && !limiter.Allow() {
				err = errors.New("too many fixes: at most 10 a second")
			}
			if err == nil {
				f.RiderID = rider
				err = in.publish(ctx, f)
			}
			if err != nil {
				if bad++; bad >= maxBadFrames {
					c.Close(websocket.StatusPolicyViolation, "too many bad frames")
					return
				}
				msg, _ := json.Marshal(map[string]string{"type": "error", "error": err.Error()})
				if werr := writeWithin(ctx, c, msg); werr != nil {
					return
				}
				continue
			}
			bad = 0
		}
	})
}

func writeWithin(ctx context.Context, c *websocket.Conn, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, msg)
}

// PositionWriter keeps each rider's latest fix in PostgreSQL, so a customer
// connecting to any instance gets the rider's position at once. It writes at
// most every flush interval, one statement for all riders, and never lets a
// fix replace a newer one.
type PositionWriter struct {
	db  *pgxpool.Pool
	log *zap.Logger

	mu      sync.Mutex
	pending map[string]Fix
}

// NewPositionWriter returns a writer to db.
func NewPositionWriter(db *pgxpool.Pool, log *zap.Logger) *PositionWriter {
	return &PositionWriter{db: db, log: log, pending: map[string]Fix{}}
}

// Note records f as its rider's latest fix, to be written at the next flush.
func (p *PositionWriter) Note(f Fix) {
	p.mu.Lock()
	if prev, ok := p.pending[f.RiderID]; !ok || f.Seq > prev.Seq {
		p.pending[f.RiderID] = f
	}
	p.mu.Unlock()
}

// Run flushes every interval until ctx is done, and once more after.
func (p *PositionWriter) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return p.flush(fctx)
		case <-t.C:
			if err := p.flush(ctx); err != nil {
				p.log.Warn("write rider positions", zap.Error(err))
			}
		}
	}
}

func (p *PositionWriter) flush(ctx context.Context) error {
	p.mu.Lock()
	batch := p.pending
	p.pending = map[string]Fix{}
	p.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	var riders []string
	var lat, lng, heading, speed []float64
	var seq []int64
	var ts []time.Time
	for _, f := range batch {
		riders, lat, lng, heading = append(riders, f.RiderID), append(lat, f.Lat), append(lng, f.Lng), append(heading, f.Heading)
		speed, seq, ts = append(speed, f.SpeedKmh), append(seq, f.Seq), append(ts, f.TS)
	}
	_, err := p.db.Exec(ctx, `INSERT INTO rider_positions (rider_id, lat, lng, heading, speed_kmh, seq, ts)
		SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::bigint[], $7::timestamptz[])
		ON CONFLICT (rider_id) DO UPDATE SET lat = excluded.lat, lng = excluded.lng, heading = excluded.heading,
			speed_kmh = excluded.speed_kmh, seq = excluded.seq, ts = excluded.ts, updated_at = now()
		WHERE rider_positions.seq < excluded.seq`, riders, lat, lng, heading, speed, seq, ts)
	if err != nil {
		// Put them back unless newer ones arrived meanwhile.
		for _, f := range batch {
			p.Note(f)
		}
		return err
	}
	return nil
}
