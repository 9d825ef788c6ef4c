package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/httpx"
)

// addRoutes lists the restaurant-side API.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool) {
	r.Method(http.MethodGet, "/v1/restaurants/{id}/orders", handleRestaurantFeed(log, db))
}

// Notification is one entry of a restaurant's feed.
type Notification struct {
	OrderID    string    `json:"order_id"`
	Event      string    `json:"event"`
	TotalCents *int64    `json:"total_cents,omitempty"`
	At         time.Time `json:"at"`
}

// handleRestaurantFeed handles "GET /v1/restaurants/{id}/orders": the
// restaurant's notifications, newest first.
func handleRestaurantFeed(log *zap.Logger, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := 50
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 500 {
				httpx.WriteProblem(w, httpx.FieldProblem("limit", "must be between 1 and 500"))
				return
			}
			limit = n
		}
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		rows, err := db.Query(ctx, `SELECT order_id::text, event_type, total_cents, created_at FROM restaurant_notifications
			WHERE restaurant_id = $1 ORDER BY created_at DESC, message_id LIMIT $2`, chi.URLParam(r, "id"), limit)
		if err != nil {
			httpx.Error(w, r, log, fmt.Errorf("read feed: %w", err))
			return
		}
		feed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Notification, error) {
			var n Notification
			err := row.Scan(&n.OrderID, &n.Event, &n.TotalCents, &n.At)
			return n, err
		})
		if err != nil {
			httpx.Error(w, r, log, fmt.Errorf("read feed: %w", err))
			return
		}
		httpx.Encode(w, http.StatusOK, map[string]any{"restaurant_id": chi.URLParam(r, "id"), "notifications": feed})
	})
}
