package main

import (
	_ "embed"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/token"
)

// openAPI documents this API (OpenAPI 3.1), served at /openapi.json; a test
// holds it to the routes below.
//
//go:embed openapi.json
var openAPI []byte

// Limits protect the order API from floods and bursts.
type Limits struct {
	PerIP    int // requests a second from one address
	InFlight int // requests served at once; past it, an immediate 503
}

// Roles, as the routes below admit them.
const (
	customer   = token.AudienceCustomer
	restaurant = token.AudienceRestaurant
	rider      = token.AudienceRider
	ops        = token.AudienceOps
	track      = token.AudienceTrack
)

// addRoutes lists the orders API, each route with the roles that may call
// it (what a role may do to a particular order is access.go's), and the
// admin API behind adminToken (the dead letters are chs's; the events
// waiting behind them, db's).
func addRoutes(r chi.Router, log *zap.Logger, store *Store, tokens TokenIssuer, guard *auth.Guard, limits Limits, adminToken string, chs dlq.Channels, db *pgxpool.Pool) {
	// One limit per address and one bound on requests in flight for the
	// whole API, not one per group; a request takes an in-flight slot only
	// once its body has arrived (ReadBody), so slow senders starve no one.
	limit := chi.Chain(httpx.LimitPerIP(limits.PerIP), httpx.ReadBody(maxBodyBytes), httpx.Shed(limits.InFlight))
	r.Route("/v1/orders", func(r chi.Router) {
		r.Use(limit...)
		r.Method(http.MethodPost, "/", guard.Allow(handleOrderCreate(log, store, tokens), customer, ops))
		r.Method(http.MethodGet, "/{id}", guard.Allow(handleOrderGet(log, store), customer, restaurant, rider, ops, track))
		r.Method(http.MethodPost, "/{id}/status", guard.Allow(handleOrderStatus(log, store), customer, restaurant, rider, ops))
		r.Method(http.MethodPost, "/{id}/rider", guard.Allow(handleRiderAssign(log, store), ops))
	})
	r.Route("/v1/restaurants/{id}/menu", func(r chi.Router) {
		r.Use(limit...)
		r.Method(http.MethodGet, "/", handleMenuGet(log, store))
		r.Method(http.MethodPut, "/", guard.Allow(handleMenuPut(log, store), restaurant, ops))
	})
	r.Method(http.MethodGet, "/openapi.json", apidoc.Handler(openAPI))
	r.Route("/v1/admin", func(r chi.Router) {
		admin := func(h http.Handler) http.Handler { return auth.Admin(adminToken, h) }
		r.Method(http.MethodGet, "/dlq", admin(handleDLQList(log, chs)))
		r.Method(http.MethodGet, "/dlq/{queue}/messages", admin(handleDLQMessages(log, chs, db)))
		r.Method(http.MethodPost, "/dlq/{queue}/replay", admin(handleDLQReplay(log, chs)))
		r.Method(http.MethodPost, "/dlq/{queue}/discard", admin(handleDLQDiscard(log, chs)))
	})
}
