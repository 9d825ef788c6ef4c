package main

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/token"
)

// Restaurant is a restaurant's record: its name and where it is (tracking
// tells it when a rider is about to arrive).
type Restaurant struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Lat       float64   `json:"lat"`
	Lng       float64   `json:"lng"`
	UpdatedAt time.Time `json:"updated_at"`
}

// restaurantRequest is the body of PUT /v1/restaurants/{id}; pointers tell
// missing from zero.
type restaurantRequest struct {
	Name *string  `json:"name"`
	Lat  *float64 `json:"lat"`
	Lng  *float64 `json:"lng"`
}

// validate checks a record's fields, naming the first at fault.
func (r restaurantRequest) validate() error {
	switch {
	case r.Name == nil || strings.TrimSpace(*r.Name) == "" || len(*r.Name) > 200:
		return httpx.FieldProblem("name", "is required, at most 200 characters")
	case r.Lat == nil || math.IsNaN(*r.Lat) || *r.Lat < -90 || *r.Lat > 90:
		return httpx.FieldProblem("lat", "is required, between -90 and 90")
	case r.Lng == nil || math.IsNaN(*r.Lng) || *r.Lng < -180 || *r.Lng > 180:
		return httpx.FieldProblem("lng", "is required, between -180 and 180")
	}
	return nil
}

// handleRestaurantPut handles "PUT /v1/restaurants/{id}": creates or
// replaces the restaurant's record, and answers it; a restaurant may write
// its own only.
func handleRestaurantPut(log *zap.Logger, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := chi.URLParam(r, "id")
		if id == "" || len(id) > 128 {
			httpx.WriteProblem(w, httpx.FieldProblem("id", "must be 1 to 128 characters"))
			return
		}
		if p, _ := auth.From(r.Context()); p.Role == token.AudienceRestaurant && p.ID != id {
			httpx.WriteProblem(w, auth.Forbidden("this token is for another restaurant"))
			return
		}
		req, err := httpx.Decode[restaurantRequest](w, r, 4<<10)
		if err == nil {
			err = req.validate()
		}
		if err != nil {
			httpx.Error(w, r, log, err)
			return
		}
		rec := Restaurant{ID: id}
		err = db.QueryRow(r.Context(), `INSERT INTO restaurants (id, name, lat, lng) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, lat = excluded.lat, lng = excluded.lng, updated_at = now()
			RETURNING name, lat, lng, updated_at`, id, strings.TrimSpace(*req.Name), *req.Lat, *req.Lng).
			Scan(&rec.Name, &rec.Lat, &rec.Lng, &rec.UpdatedAt)
		if err != nil {
			feedError(w, r, log, fmt.Errorf("store restaurant: %w", err))
			return
		}
		httpx.Encode(w, http.StatusOK, rec)
	})
}

// handleRestaurantGet handles "GET /v1/restaurants/{id}": the restaurant's
// record, or 404.
func handleRestaurantGet(log *zap.Logger, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := Restaurant{ID: chi.URLParam(r, "id")}
		err := db.QueryRow(r.Context(), "SELECT name, lat, lng, updated_at FROM restaurants WHERE id = $1", rec.ID).
			Scan(&rec.Name, &rec.Lat, &rec.Lng, &rec.UpdatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			httpx.WriteProblem(w, httpx.NewProblem(http.StatusNotFound, "no such restaurant"))
			return
		}
		if err != nil {
			feedError(w, r, log, fmt.Errorf("read restaurant: %w", err))
			return
		}
		httpx.Encode(w, http.StatusOK, rec)
	})
}
