package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/httpx"
)

// Limits on riders' streams. A phone sends a fix every 500 ms or so.
const (
	// riderIdle closes a rider socket that sent nothing for this long.
	riderIdle = 2 * time.Minute
	// Bad frames (malformed, invalid, over the rate) are answered with an
	// error frame; more than badFrameBurst of them faster than one per
	// badFrameEvery is abuse and closes the socket (1008).
	badFrameBurst = 10
	badFrameEvery = 6 * time.Second
	// publishWorkers publish fixes, each on its own channel; a rider always
	// goes through the same one, so its fixes stay in order.
	publishWorkers = 4
	// publishQueue bounds the fixes waiting for a worker; past it fixes are
	// refused (503 or an error frame) rather than piling up in memory.
	publishQueue = 4096
	publishBatch = 256
	// takeWait is how long a fix may wait for room in a full queue.
	takeWait = time.Second
)

// Errors a rider sees when a fix cannot be taken.
var (
	errFeedDown = errors.New("the location feed is unavailable; retry shortly")
	errFeedBusy = errors.New("the location feed is overloaded; fix dropped")
)

// IngestStats counts what the ingest did with fixes.
type IngestStats struct {
	Accepted  atomic.Int64 // taken for publishing
	Published atomic.Int64
	Refused   atomic.Int64 // feed down or overloaded
	Failed    atomic.Int64 // lost in a failed publish
	Invalid   atomic.Int64 // rejected by the decoder
	Limited   atomic.Int64 // over a rider's rate
}

// Ingest takes riders' fixes and publishes them to the locations exchange;
// it never writes to a customer directly.
type Ingest struct {
	conn      *broker.Conn
	positions *PositionWriter
	limits    *RiderLimits
	log       *zap.Logger
	Stats     IngestStats

	seed   maphash.Seed
	queues [publishWorkers]chan Fix
	warn   rate.Sometimes // a broker outage would otherwise log every batch
}

// NewIngest returns an ingest publishing on conn; Run must be running.
func NewIngest(conn *broker.Conn, positions *PositionWriter, limits *RiderLimits, log *zap.Logger) *Ingest {
	in := &Ingest{conn: conn, positions: positions, limits: limits, log: log.With(zap.String("component", "ingest")), seed: maphash.MakeSeed(),
		warn: rate.Sometimes{Interval: 10 * time.Second}}
	for i := range in.queues {
		in.queues[i] = make(chan Fix, publishQueue/publishWorkers)
	}
	return in
}

// take queues f for publishing. When the broker is down the fix is refused
// at once; when the workers are behind, take waits up to takeWait (the
// rider's stream slows down: backpressure) and then refuses it, so fixes
// never pile up in memory.
func (in *Ingest) take(ctx context.Context, f Fix) error {
	if !in.conn.Ready() {
		in.Stats.Refused.Add(1)
		return errFeedDown
	}
	q := in.queues[maphash.String(in.seed, f.RiderID)%publishWorkers]
	select {
	case q <- f:
		in.Stats.Accepted.Add(1)
		return nil
	default:
	}
	t := time.NewTimer(takeWait)
	defer t.Stop()
	select {
	case q <- f:
		in.Stats.Accepted.Add(1)
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	in.Stats.Refused.Add(1)
	return errFeedBusy
}

// Run publishes queued fixes until ctx is done.
func (in *Ingest) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, q := range in.queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.work(ctx, q)
		}()
	}
	wg.Wait()
	return nil
}

// work publishes fixes from q in batches: transient, without confirms (a
// fix lost in a reset is superseded by the next one within a second).
func (in *Ingest) work(ctx context.Context, q <-chan Fix) {
	pub := broker.NewTransientPublisher(in.conn, in.log)
	defer pub.Close()
	batch := make([]Fix, 0, publishBatch)
	msgs := make([]broker.Message, 0, publishBatch)
	for {
		batch, msgs = batch[:0], msgs[:0]
		select {
		case <-ctx.Done():
			return
		case f := <-q:
			batch = append(batch, f)
		}
	fill:
		for len(batch) < publishBatch {
			select {
			case f := <-q:
				batch = append(batch, f)
			default:
				break fill
			}
		}
		for _, f := range batch {
			body, err := json.Marshal(f)
			if err != nil {
				continue
			}
			msgs = append(msgs, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: riderKey(f.RiderID), Body: body,
				Transient: true, Timestamp: f.TS})
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		acked, err := pub.PublishBatch(pctx, msgs)
		cancel()
		for i, ok := range acked {
			if ok {
				in.positions.Note(batch[i])
			}
		}
		lost := countFalse(acked)
		in.Stats.Published.Add(int64(len(msgs)) - lost)
		if err != nil {
			in.Stats.Failed.Add(lost)
			in.warn.Do(func() { in.log.Warn("fixes not published", zap.Int64("lost", lost), zap.Error(err)) })
		}
	}
}

func countFalse(bs []bool) int64 {
	var n int64
	for _, b := range bs {
		if !b {
			n++
		}
	}
	return n
}

// RiderLimits holds each rider's rate limiter, shared by the rider's socket
// and POSTs so neither way round the limit works.
type RiderLimits struct {
	perSecond rate.Limit
	burst     int

	mu     sync.Mutex
	riders map[string]*rate.Limiter
}

// NewRiderLimits allows each rider perSecond fixes, with bursts of burst.
func NewRiderLimits(perSecond float64, burst int) *RiderLimits {
	return &RiderLimits{perSecond: rate.Limit(perSecond), burst: burst, riders: map[string]*rate.Limiter{}}
}

// Allow reports whether rider may send a fix now.
func (l *RiderLimits) Allow(rider string) bool {
	l.mu.Lock()
	lim := l.riders[rider]
	if lim == nil {
		lim = rate.NewLimiter(l.perSecond, l.burst)
		l.riders[rider] = lim
	}
	l.mu.Unlock()
	return lim.Allow()
}

// Run forgets riders whose bucket has refilled (they would start afresh
// anyway), so the map holds only the riders active lately.
func (l *RiderLimits) Run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			l.mu.Lock()
			for r, lim := range l.riders {
				if lim.Tokens() >= float64(l.burst) {
					delete(l.riders, r)
				}
			}
			l.mu.Unlock()
		}
	}
}

// riderOf returns the rider in the request's path, who must be the rider
// the token was minted for: 403 for another rider's path.
func riderOf(r *http.Request) (string, error) {
	rider := chi.URLParam(r, "rider_id")
	if !validRiderID(rider) {
		return "", httpx.FieldProblem("rider_id", "must be 1 to 128 characters without '.', '*', '#', '/' or spaces")
	}
	if p, _ := auth.From(r.Context()); p.ID != rider {
		return "", auth.Forbidden("this token is for another rider")
	}
	return rider, nil
}

// handleRiderLocation handles "POST /v1/riders/{rider_id}/location": one
// fix, answered 202 once it is queued for the feed.
func handleRiderLocation(log *zap.Logger, in *Ingest) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rider, err := riderOf(r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		if !in.limits.Allow(rider) {
			in.Stats.Limited.Add(1)
			p := httpx.NewProblem(http.StatusTooManyRequests, fmt.Sprintf("at most %g fixes a second", float64(in.limits.perSecond)))
			p.RetryAfter = 1
			httpx.WriteProblem(w, p)
			return
		}
		body, err := readBody(w, r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		f, err := decodeFix(body, time.Now())
		if err != nil {
			in.Stats.Invalid.Add(1)
			httpx.Error(w, r, log, err)
			return
		}
		f.RiderID = rider
		if err := in.take(r.Context(), f); err != nil {
			p := httpx.NewProblem(http.StatusServiceUnavailable, err.Error())
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

// errorFrame is what a rider's socket answers a fix it could not take.
type errorFrame struct {
	Type   string `json:"type"` // "error"
	Status int    `json:"status"`
	Field  string `json:"field,omitempty"`
	Error  string `json:"error"`
}

// handleRiderSocket handles "GET /v1/riders/{rider_id}/ws": a rider's app
// streaming fixes, one JSON fix per text message. A fix that cannot be taken
// gets an error frame and the stream goes on; repeated abuse closes the
// socket (1008), an oversized message too (1009).
func handleRiderSocket(log *zap.Logger, in *Ingest, sockets *Sockets) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rider, err := riderOf(r)
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		release, err := sockets.Reserve(r)
		if err != nil {
			p := httpx.NewProblem(http.StatusTooManyRequests, "too many open sockets from this address")
			p.RetryAfter = 5
			httpx.WriteProblem(w, p)
			return
		}
		defer release()
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return
		}
		defer c.CloseNow()
		defer sockets.Track(c)()
		c.SetReadLimit(maxFixBytes) // over it the library closes with 1009
		idle := time.AfterFunc(riderIdle, func() { _ = c.Close(websocket.StatusGoingAway, "idle") })
		defer idle.Stop()
		abuse := rate.NewLimiter(rate.Every(badFrameEvery), badFrameBurst)
		ctx := r.Context()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return // closed, oversized (1009 sent by the library), or gone
			}
			idle.Reset(riderIdle)
			frame, abusive := in.takeFrame(ctx, rider, typ, data)
			if frame == nil {
				continue
			}
			if abusive && !abuse.Allow() {
				_ = c.Close(websocket.StatusPolicyViolation, "too many bad frames")
				return
			}
			msg, _ := json.Marshal(frame)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = c.Write(wctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				return
			}
		}
	})
}

// takeFrame handles one message from a rider's socket. It returns the error
// frame to answer with, if any, and whether the frame was the rider's fault.
func (in *Ingest) takeFrame(ctx context.Context, rider string, typ websocket.MessageType, data []byte) (*errorFrame, bool) {
	if typ != websocket.MessageText {
		in.Stats.Invalid.Add(1)
		return &errorFrame{Type: "error", Status: http.StatusBadRequest, Error: "a fix is a JSON text message"}, true
	}
	f, err := decodeFix(data, time.Now())
	if err != nil {
		in.Stats.Invalid.Add(1)
		var p *httpx.Problem
		if errors.As(err, &p) {
			return &errorFrame{Type: "error", Status: p.Status, Field: p.Field, Error: p.Error()}, true
		}
		return &errorFrame{Type: "error", Status: http.StatusBadRequest, Error: err.Error()}, true
	}
	if !in.limits.Allow(rider) {
		in.Stats.Limited.Add(1)
		return &errorFrame{Type: "error", Status: http.StatusTooManyRequests,
			Error: fmt.Sprintf("at most %g fixes a second; fix %d dropped", float64(in.limits.perSecond), f.Seq)}, true
	}
	f.RiderID = rider
	if err := in.take(ctx, f); err != nil {
		return &errorFrame{Type: "error", Status: http.StatusServiceUnavailable, Error: fmt.Sprintf("%v (fix %d)", err, f.Seq)}, false
	}
	return nil, false
}

// PositionWriter keeps each rider's latest fix in PostgreSQL, so a customer
// connecting to an instance that never saw the rider still gets the rider's
// position at once. It writes at most once per interval, one statement for
// all riders, and never lets a fix replace a newer one.
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
			if err := p.flush(fctx); err != nil {
				p.log.Warn("write rider positions", zap.Error(err))
			}
			return nil
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
	if len(batch) == 0 {
		p.mu.Unlock()
		return nil
	}
	p.pending = make(map[string]Fix, len(batch))
	p.mu.Unlock()
	n := len(batch)
	riders, seq, ts := make([]string, 0, n), make([]int64, 0, n), make([]time.Time, 0, n)
	lat, lng, heading, speed := make([]float64, 0, n), make([]float64, 0, n), make([]float64, 0, n), make([]float64, 0, n)
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
		return fmt.Errorf("upsert rider positions: %w", err)
	}
	return nil
}
