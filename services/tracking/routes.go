package main

import (
	_ "embed"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/token"
)

// openAPI documents this API (OpenAPI 3.1), served at /openapi.json; a test
// holds it to the routes below.
//
//go:embed openapi.json
var openAPI []byte

// addRoutes lists the tracking API: riders' ingest, customers' stream, the
// tracking page and the service's counters.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, hub *Hub, relay *Relay, in *Ingest, sockets *Sockets, hist *History,
	signer *token.Signer, times *fixTimes, page pageConfig) {
	r.Route("/v1/riders/{rider_id}", func(r chi.Router) {
		r.Method(http.MethodPost, "/location", handleRiderLocation(log, in, signer))
		r.Method(http.MethodGet, "/ws", handleRiderSocket(log, in, signer, sockets))
	})
	r.Method(http.MethodGet, "/v1/orders/{id}/track", handleTrack(log, db, hub, signer, sockets, times))
	r.Method(http.MethodGet, "/v1/orders/{id}/path", handlePath(log, db, signer))
	r.Method(http.MethodGet, "/track/{order_id}", handleTrackPage(page))
	r.Method(http.MethodGet, "/track/assets/*", handleTrackAssets())
	r.Method(http.MethodGet, "/stats", handleStats(hub, relay, in, sockets, hist))
	r.Method(http.MethodGet, "/openapi.json", apidoc.Handler(openAPI))
}
