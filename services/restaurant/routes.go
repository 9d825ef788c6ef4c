package main

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// addRoutes lists the restaurant API.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool) {
	r.Method(http.MethodGet, "/v1/restaurants/{id}/orders", handleFeed(log, db))
}
