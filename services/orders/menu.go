package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
)

// maxMenuItems bounds a menu; maxMenuBytes its request body.
const (
	maxMenuItems = 1000
	maxMenuBytes = 1 << 20
)

// Menu is a restaurant's menu: what its orders' lines are priced from.
type Menu struct {
	RestaurantID string     `json:"restaurant_id"`
	Items        []MenuItem `json:"items"`
}

// MenuItem is one dish of a menu.
type MenuItem struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	Available  bool   `json:"available"`
}

// menuRequest is the body of PUT /v1/restaurants/{id}/menu; pointers tell
// a missing field from a zero.
type menuRequest struct {
	Items []struct {
		SKU        string `json:"sku"`
		Name       string `json:"name"`
		PriceCents *int64 `json:"price_cents"`
		Available  *bool  `json:"available"`
	} `json:"items"`
}

// validate returns the menu the request describes, or a 400 problem naming
// the first field at fault.
func (r menuRequest) validate(restaurantID string) (Menu, error) {
	if r.Items == nil {
		return Menu{}, httpx.FieldProblem("items", "is required (an empty list empties the menu)")
	}
	if len(r.Items) > maxMenuItems {
		return Menu{}, httpx.FieldProblem("items", fmt.Sprintf("must hold at most %d items", maxMenuItems))
	}
	m := Menu{RestaurantID: restaurantID, Items: make([]MenuItem, len(r.Items))}
	seen := make(map[string]bool, len(r.Items))
	for i, it := range r.Items {
		field := func(name string) string { return fmt.Sprintf("items[%d].%s", i, name) }
		if err := checkText(field("sku"), it.SKU, maxIDLen); err != nil {
			return Menu{}, err
		}
		if seen[it.SKU] {
			return Menu{}, httpx.FieldProblem(field("sku"), "appears twice in the menu")
		}
		seen[it.SKU] = true
		if err := checkText(field("name"), it.Name, maxTextLen); err != nil {
			return Menu{}, err
		}
		switch {
		case it.PriceCents == nil:
			return Menu{}, httpx.FieldProblem(field("price_cents"), "is required")
		case *it.PriceCents < 0 || *it.PriceCents > maxPriceCents:
			return Menu{}, httpx.FieldProblem(field("price_cents"), fmt.Sprintf("must be between 0 and %d", maxPriceCents))
		case it.Available == nil:
			return Menu{}, httpx.FieldProblem(field("available"), "is required")
		}
		m.Items[i] = MenuItem{SKU: it.SKU, Name: it.Name, PriceCents: *it.PriceCents, Available: *it.Available}
	}
	return m, nil
}

// restaurantOf reads the {id} of a menu route.
func restaurantOf(r *http.Request) (string, error) {
	id := chi.URLParam(r, "id")
	if err := checkText("id", id, maxIDLen); err != nil {
		return "", err
	}
	return id, nil
}

// handleMenuPut handles "PUT /v1/restaurants/{id}/menu": the restaurant
// (or an operator) replaces its menu, and gets it back.
func handleMenuPut(log *zap.Logger, store *Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := restaurantOf(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if p := principal(r); p.Role == token.AudienceRestaurant && p.ID != id {
			writeError(w, r, log, auth.Forbidden("this token is for another restaurant"))
			return
		}
		req, err := httpx.Decode[menuRequest](w, r, maxMenuBytes)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		m, err := req.validate(id)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), dbTimeout)
		defer cancel()
		if err := store.ReplaceMenu(ctx, m); err != nil {
			writeError(w, r, log, err)
			return
		}
		httpx.Encode(w, http.StatusOK, m)
	})
}

// handleMenuGet handles "GET /v1/restaurants/{id}/menu": anyone may read a
// menu; a restaurant without one has an empty one.
func handleMenuGet(log *zap.Logger, store *Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := restaurantOf(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), dbTimeout)
		defer cancel()
		m, err := store.Menu(ctx, id)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		httpx.Encode(w, http.StatusOK, m)
	})
}

// ReplaceMenu makes m its restaurant's whole menu, in one transaction of
// one round trip: the dishes it no longer lists go, the others are written
// in m's order.
func (s *Store) ReplaceMenu(ctx context.Context, m Menu) error {
	n := len(m.Items)
	skus, names, prices, available := make([]string, n), make([]string, n), make([]int64, n), make([]bool, n)
	for i, it := range m.Items {
		skus[i], names[i], prices[i], available[i] = it.SKU, it.Name, it.PriceCents, it.Available
	}
	var b pgx.Batch
	b.Queue("DELETE FROM menu_items WHERE restaurant_id = $1 AND sku <> ALL($2::text[])", m.RestaurantID, skus)
	b.Queue(`INSERT INTO menu_items (restaurant_id, sku, name, price_cents, available, position)
		SELECT $1, sku, name, price_cents, available, position
		FROM unnest($2::text[], $3::text[], $4::bigint[], $5::boolean[]) WITH ORDINALITY AS t (sku, name, price_cents, available, position)
		ON CONFLICT (restaurant_id, sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
			available = excluded.available, position = excluded.position, updated_at = now()`,
		m.RestaurantID, skus, names, prices, available)
	if err := postgres.SendTx(ctx, s.db, &b, nil); err != nil {
		return fmt.Errorf("replace menu: %w", err)
	}
	return nil
}

// Menu returns a restaurant's menu, empty when it has none.
func (s *Store) Menu(ctx context.Context, restaurantID string) (Menu, error) {
	rows, err := s.db.Query(ctx, `SELECT sku, name, price_cents, available FROM menu_items
		WHERE restaurant_id = $1 ORDER BY position, sku`, restaurantID)
	if err != nil {
		return Menu{}, fmt.Errorf("read menu: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (MenuItem, error) {
		var it MenuItem
		err := r.Scan(&it.SKU, &it.Name, &it.PriceCents, &it.Available)
		return it, err
	})
	if err != nil {
		return Menu{}, fmt.Errorf("read menu: %w", err)
	}
	if items == nil {
		items = []MenuItem{} // an empty menu is [], not null
	}
	return Menu{RestaurantID: restaurantID, Items: items}, nil
}
