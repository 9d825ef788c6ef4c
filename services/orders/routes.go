package main

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/httpx"
)

// addRoutes lists the orders API.
func addRoutes(r chi.Router, log *zap.Logger, store *Store, tokens TokenIssuer, perIP int) {
	r.Route("/v1/orders", func(r chi.Router) {
		r.Use(httpx.LimitPerIP(perIP))
		r.Method(http.MethodPost, "/", handleOrderCreate(log, store, tokens))
		r.Method(http.MethodGet, "/{id}", handleOrderGet(log, store))
		r.Method(http.MethodPost, "/{id}/status", handleOrderStatus(log, store))
		r.Method(http.MethodPost, "/{id}/rider", handleRiderAssign(log, store))
	})
}
