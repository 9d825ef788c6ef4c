package main

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/postgres"
)

// Customer socket timing.
const (
	pingEvery = 25 * time.Second // keeps idle connections (and proxies) open, finds dead peers
	pongWait  = 10 * time.Second // a ping unanswered this long means the peer is gone
	// writeTimeout bounds one write: a customer whose socket takes no data
	// for this long has stalled, and is dropped.
	writeTimeout = 10 * time.Second
	// slowLimit is how long a customer may stay continuously behind (its
	// writer never catching up) before it is closed as too slow.
	slowLimit = 10 * time.Second
)

// handleTrack handles "GET /v1/orders/{id}/track": a customer's live view of
// an order, authorised by its tracking token (403 for another order's). On connect it sends the
// order's status and the rider's latest known position, then every newer
// fix and status change. A fix older than one sent is never sent.
//
// To keep an idle connection small (issue 4 asks for at most 16 KiB) the
// handler returns once the socket is set up: what remains is one goroutine
// reading control frames, 512-byte buffers and a ping timer; a writer
// goroutine exists only while something is being sent.
func handleTrack(log *zap.Logger, db *pgxpool.Pool, hub *Hub, sockets *Sockets, times *fixTimes) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := uuid.Parse(chi.URLParam(r, "id"))
		if err != nil {
			httpx.WriteProblem(w, httpx.FieldProblem("id", "must be a UUID"))
			return
		}
		orderID := id.String()
		if p, _ := auth.From(r.Context()); p.ID != orderID {
			httpx.WriteProblem(w, auth.Forbidden("this tracking token is for another order"))
			return
		}
		release, err := sockets.Reserve(r)
		if err != nil {
			p := httpx.NewProblem(http.StatusTooManyRequests, "too many open sockets from this address")
			p.RetryAfter = 5
			httpx.WriteProblem(w, p)
			return
		}
		// Registered before the state is read, so no update published in
		// between is missed; updates are ordered by time and seq, so one
		// arriving twice (live and from the table) is sent once.
		wt := newWatcher(orderID)
		hub.Add(wt)
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		o, err := loadOrder(ctx, db, orderID)
		var fix Fix
		var hasFix bool
		if err == nil && o.RiderID != "" && followsRider(o.Status) {
			fix, hasFix, err = latestFix(ctx, db, hub, orderID, o.RiderID)
		}
		cancel()
		if err != nil && !errors.Is(err, errUnknownOrder) {
			hub.Remove(wt)
			release()
			if postgres.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
				httpx.WriteProblem(w, httpx.Unavailable("tracking"))
				return
			}
			httpx.Error(w, r, log, err)
			return
		}
		c, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			hub.Remove(wt)
			release()
			return
		}
		c.SetReadLimit(socketBufferSize) // a customer sends nothing but control frames
		cc := &customerConn{c: c, w: wt, log: log, stats: &hub.Stats, times: times}
		forget := sockets.Track(c)
		hub.Apply(wt, o)
		if hasFix {
			wt.offerFix(newLiveFix(fix, "")) // no path: not timed
		}
		wt.setStart(cc.flush)
		cc.ping = time.AfterFunc(pingEvery/2+rand.N(pingEvery/2), cc.sendPing)
		// The customer sends nothing. This read answers pings and the close
		// handshake and returns when the socket ends; it is the one
		// goroutine an idle connection keeps. (CloseRead would do the same
		// with two more contexts per connection.)
		go func() {
			if _, _, err := c.Reader(context.Background()); err == nil {
				_ = c.Close(websocket.StatusPolicyViolation, "this socket takes no messages")
			}
			hub.Remove(wt)
			cc.ping.Stop()
			forget()
			release()
			c.CloseNow()
		}()
	})
}

// latestFix is the newer of what this instance saw and what is stored: an
// instance that watches the rider already knows; one that does not reads
// the history (written within a second or so of a fix).
func latestFix(ctx context.Context, db *pgxpool.Pool, hub *Hub, orderID, rider string) (Fix, bool, error) {
	mem, inMem := hub.Latest(rider)
	stored, inDB, err := loadPosition(ctx, db, orderID, rider)
	switch {
	case err != nil:
		return Fix{}, false, err
	case !inDB || (inMem && mem.Seq >= stored.Seq):
		return mem, inMem, nil
	}
	return stored, true, nil
}

// customerConn writes a watcher's messages to its socket.
type customerConn struct {
	c     *websocket.Conn
	w     *watcher
	log   *zap.Logger
	stats *HubStats
	times *fixTimes
	ping  *time.Timer
}

// flush writes what is pending until nothing is: statuses first, then the
// newest fix. It runs only while there is something to write.
func (cc *customerConn) flush() {
	since := time.Now()
	for {
		p, ok := cc.w.take()
		if !ok {
			return
		}
		if p.overflow {
			cc.tooSlow("status updates piled up")
			return
		}
		msgs := make([]any, 0, len(p.statuses)+1)
		for _, m := range p.statuses {
			msgs = append(msgs, m)
		}
		if p.near != nil {
			msgs = append(msgs, p.near)
		}
		for _, m := range msgs {
			msg, err := json.Marshal(m)
			if err != nil {
				cc.log.Error("encode message", zap.Error(err))
				return
			}
			if !cc.write(msg) {
				return
			}
		}
		if fix := p.fix; fix != nil {
			if !cc.write(fix.message()) {
				return
			}
			cc.stats.Sent.Add(1)
			cc.times.written(fix, time.Now())
		}
		if time.Since(since) > slowLimit {
			cc.tooSlow("cannot keep up with the rider's fixes")
			return
		}
	}
}

// write writes one message, closing a stalled socket.
func (cc *customerConn) write(msg []byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := cc.c.Write(ctx, websocket.MessageText, msg); err != nil {
		if ctx.Err() != nil {
			// The library closed the connection: no close frame can get
			// through a stalled socket anyway.
			cc.stats.Dropped.Add(1)
			cc.log.Info("customer socket stalled, closed", zap.String("order_id", cc.w.orderID))
		}
		return false
	}
	return true
}

// tooSlow closes the connection with a reason the customer's app can show.
func (cc *customerConn) tooSlow(why string) {
	cc.stats.Dropped.Add(1)
	cc.log.Info("customer too slow, closed", zap.String("order_id", cc.w.orderID), zap.String("why", why))
	go func() { _ = cc.c.Close(websocket.StatusPolicyViolation, "too slow: "+why) }()
}

// sendPing pings the customer; no pong in time closes the socket.
func (cc *customerConn) sendPing() {
	ctx, cancel := context.WithTimeout(context.Background(), pongWait)
	defer cancel()
	if err := cc.c.Ping(ctx); err != nil {
		cc.c.CloseNow()
		return
	}
	cc.ping.Reset(pingEvery)
}
