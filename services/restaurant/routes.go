package main

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/httpx"
)

// addRoutes lists the restaurant API. A restaurant's record is written by
// an operator (ADMIN_TOKEN) and read by anyone.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, adminToken string) {
	r.Method(http.MethodGet, "/v1/restaurants/{id}/orders", handleFeed(log, db))
	r.Method(http.MethodGet, "/v1/restaurants/{id}", handleRestaurantGet(log, db))
	r.With(httpx.RequireAdmin(adminToken, "restaurant")).Method(http.MethodPut, "/v1/restaurants/{id}", handleRestaurantPut(log, db))
}
