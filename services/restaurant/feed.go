package main

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
)

// Feed page sizes.
const (
	defaultFeedLimit = 50
	maxFeedLimit     = 500
)

// Feed is a restaurant's feed, newest notification first.
type Feed struct {
	RestaurantID  string         `json:"restaurant_id"`
	Notifications []Notification `json:"notifications"`
}

// Notification is one entry of a restaurant's feed: an event of one of its
// orders.
type Notification struct {
	EventID    string    `json:"event_id"`
	OrderID    string    `json:"order_id"`
	Event      string    `json:"event"`
	TotalCents *int64    `json:"total_cents,omitempty"`
	At         time.Time `json:"at"`
}

// handleFeed handles "GET /v1/restaurants/{id}/orders": the restaurant's
// notifications, newest first, at most ?limit= of them (default 50, up to
// 500), to the restaurant itself or an operator.
func handleFeed(log *zap.Logger, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := chi.URLParam(r, "id")
		if p, _ := auth.From(r.Context()); p.Role == token.AudienceRestaurant && p.ID != id {
			httpx.WriteProblem(w, auth.Forbidden("this token is for another restaurant"))
			return
		}
		limit := defaultFeedLimit
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > maxFeedLimit {
				httpx.WriteProblem(w, httpx.FieldProblem("limit", fmt.Sprintf("must be an integer from 1 to %d", maxFeedLimit)))
				return
			}
			limit = n
		}
		rows, err := db.Query(r.Context(), `SELECT message_id, order_id::text, event_type, total_cents, created_at
			FROM restaurant_notifications WHERE restaurant_id = $1
			ORDER BY created_at DESC, message_id DESC LIMIT $2`, id, limit)
		if err != nil {
			feedError(w, r, log, err)
			return
		}
		feed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Notification, error) {
			var n Notification
			err := row.Scan(&n.EventID, &n.OrderID, &n.Event, &n.TotalCents, &n.At)
			return n, err
		})
		if err != nil {
			feedError(w, r, log, err)
			return
		}
		if feed == nil {
			feed = []Notification{} // an empty feed is [], not null
		}
		httpx.Encode(w, http.StatusOK, Feed{RestaurantID: id, Notifications: feed})
	})
}

// feedError answers 503 while the database is unreachable, so clients retry,
// and 500 for anything else.
func feedError(w http.ResponseWriter, r *http.Request, log *zap.Logger, err error) {
	if postgres.IsUnavailable(err) {
		httpx.WriteProblem(w, httpx.Unavailable("the feed"))
		return
	}
	httpx.Error(w, r, log, fmt.Errorf("read feed: %w", err))
}
