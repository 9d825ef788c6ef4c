package main

import (
	_ "embed"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/token"
)

// openAPI documents this API (OpenAPI 3.1), served at /openapi.json; a test
// holds it to the routes below.
//
//go:embed openapi.json
var openAPI []byte

// addRoutes lists the tracking API: riders' ingest (rider tokens),
// customers' stream (tracking tokens; in the query too, since a browser
// cannot give a WebSocket a header), the tracking page (public: the page
// holds nothing, its socket checks the token), the path travelled (the
// order's tracking token, its customer's or an operator's), and the service's counters
// (behind admin, which guards with the admin token).
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, hub *Hub, relay *Relay, in *Ingest, sockets *Sockets,
	hist *History, guard *auth.Guard, admin func(http.Handler) http.Handler, times *fixTimes, page pageConfig) {
	r.Route("/v1/riders/{rider_id}", func(r chi.Router) {
		r.Method(http.MethodPost, "/location", guard.Allow(handleRiderLocation(log, in), token.AudienceRider))
		r.Method(http.MethodGet, "/ws", guard.AllowQuery(handleRiderSocket(log, in, sockets), token.AudienceRider))
	})
	r.Method(http.MethodGet, "/v1/orders/{id}/track", guard.AllowQuery(handleTrack(log, db, hub, sockets, times), token.AudienceTrack))
	r.Method(http.MethodGet, "/v1/orders/{id}/path", guard.AllowQuery(handlePath(log, db), token.AudienceTrack, token.AudienceCustomer, token.AudienceOps))
	r.Method(http.MethodGet, "/track/{order_id}", handleTrackPage(page))
	r.Method(http.MethodGet, "/track/assets/*", handleTrackAssets())
	r.Method(http.MethodGet, "/stats", admin(handleStats(hub, relay, in, sockets, hist)))
	r.Method(http.MethodGet, "/openapi.json", apidoc.Handler(openAPI))
}
