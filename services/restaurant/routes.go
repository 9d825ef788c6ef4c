package main

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/token"
)

// addRoutes lists the restaurant API: a restaurant reads its own feed (a
// restaurant token for {id}; another restaurant's is 403), an operator any.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, guard *auth.Guard) {
	r.Method(http.MethodGet, "/v1/restaurants/{id}/orders", guard.Allow(handleFeed(log, db), token.AudienceRestaurant, token.AudienceOps))
}
