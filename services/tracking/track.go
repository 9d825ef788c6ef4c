package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/token"
)

// Customer socket timing.
const (
	pingEvery    = 20 * time.Second // keeps idle connections open, finds dead ones
	writeTimeout = 5 * time.Second  // a customer slower than this is closed
)

// handleTrack handles "GET /v1/orders/{id}/track": a customer's live view
// of an order, authorised by its tracking token. On connect it sends the
// order's status and the rider's latest position, then every newer fix and
// status change. Nothing older than what was sent is ever sent.
func handleTrack(log *zap.Logger, db *pgxpool.Pool, hub *Hub, signer *token.Signer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := uuid.Parse(chi.URLParam(r, "id"))
		if err != nil {
			httpx.WriteProblem(w, httpx.FieldProblem("id", "must be a UUID"))
			return
		}
		orderID := id.String()
		if err := signer.VerifyTracking(bearer(r), orderID); err != nil {
			httpx.WriteProblem(w, httpx.NewProblem(http.StatusUnauthorized, "a valid tracking token for this order is required"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		o, err := loadOrder(ctx, db, orderID)
		cancel()
		if err != nil && !errors.Is(err, errUnknownOrder) {
			httpx.Error(w, r, log, err)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		wt := newWatcher(orderID, o.RiderID)
		hub.Add(wt)
		defer hub.Remove(wt)
		if o.Status != "" {
			wt.offerStatus(statusMsg{Type: "status", OrderID: orderID, Status: o.Status, At: o.StatusAt})
		}
		if o.RiderID != "" {
			if f, ok := latestFix(r.Context(), db, hub, o.RiderID); ok {
				wt.offerFix(f)
			}
		}
		// The customer sends nothing; CloseRead answers pings and closes
		// and cancels ctx when the customer goes.
		serveWatcher(c.CloseRead(r.Context()), c, wt, log)
	})
}

// latestFix is the newer of what this instance saw and what is stored.
func latestFix(ctx context.Context, db *pgxpool.Pool, hub *Hub, rider string) (Fix, bool) {
	mem, inMem := hub.Latest(rider)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	stored, inDB, err := loadPosition(ctx, db, rider)
	switch {
	case err != nil || !inDB:
		return mem, inMem
	case inMem && mem.Seq >= stored.Seq:
		return mem, true
	}
	return stored, true
}

// serveWatcher writes what is pending for wt until the customer goes, or is
// too slow to keep up.
func serveWatcher(ctx context.Context, c *websocket.Conn, wt *watcher, log *zap.Logger) {
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				return
			}
		case <-wt.wake:
			fix, statuses, overflow := wt.take()
			if overflow {
				c.Close(websocket.StatusPolicyViolation, "too slow: status updates piled up")
				return
			}
			for _, m := range statuses {
				if !send(ctx, c, m) {
					return
				}
			}
			if fix != nil && !send(ctx, c, locationMsg{Type: "location", Fix: *fix}) {
				return
			}
		}
	}
}

func send(ctx context.Context, c *websocket.Conn, v any) bool {
	msg, _ := json.Marshal(v)
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := c.Write(wctx, websocket.MessageText, msg); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			c.Close(websocket.StatusPolicyViolation, "too slow to keep up")
		}
		return false
	}
	return true
}
