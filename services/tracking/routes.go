package main

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/token"
)

// addRoutes lists the tracking API: riders' ingest and customers' stream.
func addRoutes(r chi.Router, log *zap.Logger, db *pgxpool.Pool, hub *Hub, in *Ingest, signer *token.Signer) {
	r.Method(http.MethodPost, "/v1/riders/{rider_id}/location", handleRiderLocation(log, in, signer))
	r.Method(http.MethodGet, "/v1/riders/{rider_id}/ws", handleRiderSocket(log, in, signer))
	r.Method(http.MethodGet, "/v1/orders/{id}/track", handleTrack(log, db, hub, signer))
}
