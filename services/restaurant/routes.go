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
// restaurant token for {id}; another restaurant's is 403), an operator any;
// a restaurant's record (where it is) is written by the restaurant or an
// operator and read by anyone.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, guard *auth.Guard) {
	r.Method(http.MethodGet, "/v1/restaurants/{id}/orders", guard.Allow(handleFeed(log, db), token.AudienceRestaurant, token.AudienceOps))
	r.Method(http.MethodGet, "/v1/restaurants/{id}", handleRestaurantGet(log, db))
	r.Method(http.MethodPut, "/v1/restaurants/{id}", guard.Allow(handleRestaurantPut(log, db), token.AudienceRestaurant, token.AudienceOps))
}
