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
)

// Errors a rider sees when a fix cannot be taken.
var (
	errFeedDown = errors.New("the location feed is unavailable; retry shortly")
	errFeedBusy = errors.New("the location feed is overloaded; fix dropped")
)

// IngestStats counts what the ingest did with fixes.
type IngestStats struct {
	Accepted  atomic.Int64 // taken: handed to local watchers, the publisher, the history
	Published atomic.Int64 // sent to the locations exchange
	Coalesced atomic.Int64 // replaced by a newer fix of the rider before it was published
	Refused   atomic.Int64 // feed down or overloaded
	Failed    atomic.Int64 // lost in a failed publish
	Invalid   atomic.Int64 // rejected by the decoder
	Limited   atomic.Int64 // over a rider's rate
}

// Ingest takes riders' fixes. A fix goes to the customers watching its
// rider on this instance directly (the hub), and to the locations exchange
// only when a customer on another instance watches the rider (interest):
// of a city's riders, the few being watched at a time are what anyone can
// receive, so the broker carries those and nothing else. Ingest never
// writes to a customer's socket itself and never waits: what is not
// published yet is the newest fix of each rider (publisher).
type Ingest struct {
	conn       *broker.Conn
	hub        *Hub
	interest   *Interest
	out        *publisher
	deliveries *Deliveries
	limits     *RiderLimits
	log        *zap.Logger
	Stats      IngestStats
}

// NewIngest returns an ingest handing fixes to hub and deliveries (the
// history), and publishing on conn those interest says another instance
// wants; Run must be running.
func NewIngest(conn *broker.Conn, hub *Hub, interest *Interest, deliveries *Deliveries, limits *RiderLimits, log *zap.Logger) *Ingest {
	in := &Ingest{conn: conn, hub: hub, interest: interest, deliveries: deliveries, limits: limits,
		log: log.With(zap.String("component", "ingest"))}
	in.out = newPublisher(conn, &in.Stats, in.log)
	return in
}

// take takes f, read from its rider at rx. While the broker is down the
// fix is refused at once (the rider's app sends the next one): the
// customers on other instances could not get it, and a rider told nothing
// would believe they are seen.
func (in *Ingest) take(f Fix, rx time.Time) error {
	if !in.conn.Ready() {
		in.Stats.Refused.Add(1)
		return errFeedDown
	}
	f.RX = rx.UnixNano()
	if in.interest.Remote(f.RiderID) && !in.out.offer(f) {
		in.Stats.Refused.Add(1)
		return errFeedBusy
	}
	in.Stats.Accepted.Add(1)
	in.hub.Local(f)
	in.deliveries.Observe(f, rx)
	return nil
}

// Run publishes until ctx is done.
func (in *Ingest) Run(ctx context.Context) error {
	in.out.run(ctx)
	return nil
}

// RiderLimits holds each rider's rate limiter, shared by the rider's socket
// and POSTs so neither way round the limit works. The riders are spread
// over shards, each with its own lock, since every fix of the city asks.
type RiderLimits struct {
	perSecond rate.Limit
	burst     int
	seed      maphash.Seed
	shards    [limitShards]limitShard
}

const limitShards = 64

type limitShard struct {
	mu     sync.Mutex
	riders map[string]*rate.Limiter
}

// NewRiderLimits allows each rider perSecond fixes, with bursts of burst.
func NewRiderLimits(perSecond float64, burst int) *RiderLimits {
	l := &RiderLimits{perSecond: rate.Limit(perSecond), burst: burst, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].riders = map[string]*rate.Limiter{}
	}
	return l
}

// Allow reports whether rider may send a fix at now.
func (l *RiderLimits) Allow(rider string, now time.Time) bool {
	sh := &l.shards[maphash.String(l.seed, rider)%limitShards]
	sh.mu.Lock()
	lim := sh.riders[rider]
	if lim == nil {
		lim = rate.NewLimiter(l.perSecond, l.burst)
		sh.riders[rider] = lim
	}
	sh.mu.Unlock()
	return lim.AllowN(now, 1)
}

// Run forgets riders whose bucket has refilled (they would start afresh
// anyway), so the maps hold only the riders active lately.
func (l *RiderLimits) Run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			for i := range l.shards {
				sh := &l.shards[i]
				sh.mu.Lock()
				for r, lim := range sh.riders {
					if lim.Tokens() >= float64(l.burst) {
						delete(sh.riders, r)
					}
				}
				sh.mu.Unlock()
			}
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
		if !in.limits.Allow(rider, time.Now()) {
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
		now := time.Now()
		f, err := decodeFix(body, now)
		if err != nil {
			in.Stats.Invalid.Add(1)
			httpx.Error(w, r, log, err)
			return
		}
		f.RiderID = rider
		if err := in.take(f, now); err != nil {
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
//
// The handler returns once the socket is up and leaves it to a goroutine
// of its own: net/http's stack, grown by the handshake, would otherwise
// stay with each of a city's riders (16 KiB each).
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
		// Small buffers, as for a customer: a rider sends fixes of a
		// couple of hundred bytes and reads only error frames.
		c, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			release()
			return
		}
		forget := sockets.Track(c)
		go func() {
			defer release()
			defer forget()
			defer c.CloseNow()
			in.readRider(c, rider)
		}()
	})
}

// readRider takes a rider's fixes from c until the socket ends.
func (in *Ingest) readRider(c *websocket.Conn, rider string) {
	c.SetReadLimit(maxFixBytes) // over it the library closes with 1009
	// The idle timer is re-armed when it fires, not at every fix: a city's
	// fixes would otherwise reset a timer 20,000 times a second.
	var lastRead atomic.Int64
	lastRead.Store(time.Now().UnixNano())
	var idle *time.Timer
	idle = time.AfterFunc(riderIdle, func() {
		if quiet := time.Since(time.Unix(0, lastRead.Load())); quiet < riderIdle {
			idle.Reset(riderIdle - quiet)
			return
		}
		_ = c.Close(websocket.StatusGoingAway, "idle")
	})
	defer idle.Stop()
	abuse := rate.NewLimiter(rate.Every(badFrameEvery), badFrameBurst)
	buf := make([]byte, maxFixBytes+2) // one per socket: reading a fix allocates nothing
	for {
		typ, data, err := readMessage(c, buf)
		if errors.Is(err, websocket.ErrMessageTooBig) {
			// The library has sent its 1009. Finish the handshake, which
			// reads what is left of the message: a socket closed with
			// unread data is reset, and the rider might never see why.
			_ = c.Close(websocket.StatusMessageTooBig, "a fix is at most 1 KiB")
			return
		}
		if err != nil {
			return // closed or gone
		}
		now := time.Now()
		lastRead.Store(now.UnixNano())
		frame, abusive := in.takeFrame(rider, typ, data, now)
		if frame == nil {
			continue
		}
		if abusive && !abuse.Allow() {
			_ = c.Close(websocket.StatusPolicyViolation, "too many bad frames")
			return
		}
		msg, _ := json.Marshal(frame)
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = c.Write(wctx, websocket.MessageText, msg)
		cancel()
		if err != nil {
			return
		}
	}
}

// readMessage reads the next data message of c into buf, which must be
// longer than c's read limit plus one (the library reads one byte past its
// limit before it refuses a message, and must be the one to refuse it: it
// then sends the 1009). A background context: the library then sets up no
// cancellation per read, and a closed socket ends the read.
func readMessage(c *websocket.Conn, buf []byte) (websocket.MessageType, []byte, error) {
	typ, r, err := c.Reader(context.Background())
	if err != nil {
		return 0, nil, err
	}
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		switch {
		case errors.Is(err, io.EOF):
			return typ, buf[:n], nil
		case err != nil:
			return 0, nil, err
		case n == len(buf):
			return 0, nil, errors.New("message over the read limit") // the library's limit stops it first
		}
	}
}

// takeFrame handles one message from a rider's socket. It returns the error
// frame to answer with, if any, and whether the frame was the rider's fault.
func (in *Ingest) takeFrame(rider string, typ websocket.MessageType, data []byte, now time.Time) (*errorFrame, bool) {
	if typ != websocket.MessageText {
		in.Stats.Invalid.Add(1)
		return &errorFrame{Type: "error", Status: http.StatusBadRequest, Error: "a fix is a JSON text message"}, true
	}
	f, err := decodeFix(data, now)
	if err != nil {
		in.Stats.Invalid.Add(1)
		var p *httpx.Problem
		if errors.As(err, &p) {
			return &errorFrame{Type: "error", Status: p.Status, Field: p.Field, Error: p.Error()}, true
		}
		return &errorFrame{Type: "error", Status: http.StatusBadRequest, Error: err.Error()}, true
	}
	if !in.limits.Allow(rider, now) {
		in.Stats.Limited.Add(1)
		return &errorFrame{Type: "error", Status: http.StatusTooManyRequests,
			Error: fmt.Sprintf("at most %g fixes a second; fix %d dropped", float64(in.limits.perSecond), f.Seq)}, true
	}
	f.RiderID = rider
	if err := in.take(f, now); err != nil {
		return &errorFrame{Type: "error", Status: http.StatusServiceUnavailable, Error: fmt.Sprintf("%v (fix %d)", err, f.Seq)}, false
	}
	return nil, false
}
