package main

import (
	_ "embed"
	"net/http"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/httpx"
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

// addRoutes lists the orders API, and the admin API behind adminToken.
func addRoutes(r chi.Router, log *zap.Logger, store *Store, tokens TokenIssuer, limits Limits, adminToken string, chs dlq.Channels) {
	r.Route("/v1/orders", func(r chi.Router) {
		r.Use(httpx.LimitPerIP(limits.PerIP), httpx.Shed(limits.InFlight))
		r.Method(http.MethodPost, "/", handleOrderCreate(log, store, tokens))
		r.Method(http.MethodGet, "/{id}", handleOrderGet(log, store))
		r.Method(http.MethodPost, "/{id}/status", handleOrderStatus(log, store))
		r.Method(http.MethodPost, "/{id}/rider", handleRiderAssign(log, store))
	})
	r.Method(http.MethodGet, "/openapi.json", apidoc.Handler(openAPI))
	r.Route("/v1/admin", func(r chi.Router) {
		r.Use(requireAdmin(adminToken))
		r.Method(http.MethodGet, "/dlq", handleDLQList(log, chs))
		r.Method(http.MethodGet, "/dlq/{queue}/messages", handleDLQMessages(log, chs))
		r.Method(http.MethodPost, "/dlq/{queue}/replay", handleDLQReplay(log, chs))
		r.Method(http.MethodPost, "/dlq/{queue}/discard", handleDLQDiscard(log, chs))
	})
}
