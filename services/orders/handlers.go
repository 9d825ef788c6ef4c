package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
)

// dbTimeout bounds every request's database work: with the database gone a
// client gets a quick 503, never a hang.
const dbTimeout = 3 * time.Second

// trackingTokenTTL is how long an order's tracking token stays valid.
const trackingTokenTTL = 48 * time.Hour

// TokenIssuer mints the tracking token returned with a new order.
type TokenIssuer interface {
	Tracking(orderID string, ttl time.Duration) (string, error)
}

// handleOrderCreate handles "POST /v1/orders": a customer places its own
// order (customer_id, if given, must be the token's), an operator one for
// any customer.
func handleOrderCreate(log *zap.Logger, store *Store, tokens TokenIssuer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := principal(r)
		key := r.Header.Get("Idempotency-Key")
		switch {
		case key == "":
			httpx.WriteProblem(w, httpx.FieldProblem("Idempotency-Key", "header is required"))
			return
		case len(key) > 255 || !printableASCII(key):
			httpx.WriteProblem(w, httpx.FieldProblem("Idempotency-Key", "must be 1 to 255 printable ASCII characters"))
			return
		}
		req, err := httpx.Decode[placeRequest](w, r, maxBodyBytes)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if who.Role == token.AudienceCustomer {
			if req.CustomerID != "" && req.CustomerID != who.ID {
				writeError(w, r, log, auth.Forbidden("customer_id names another customer than the token's"))
				return
			}
			req.CustomerID = who.ID
		}
		lines, addr, err := req.validate()
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		now := time.Now().UTC().Truncate(time.Microsecond) // what PostgreSQL keeps
		o := Order{ID: events.NewID(), Status: events.StatusPlaced, CustomerID: req.CustomerID, RestaurantID: req.RestaurantID,
			Email: req.Email, DeliveryAddress: addr, CreatedAt: now, UpdatedAt: now,
			History: []StatusChange{{Status: events.StatusPlaced, At: now}}}
		ctx, cancel := context.WithTimeout(r.Context(), dbTimeout)
		defer cancel()
		res, err := store.Place(ctx, key, req, lines, o, func(o Order) ([]byte, error) {
			tok, err := tokens.Tracking(o.ID, trackingTokenTTL)
			if err != nil {
				return nil, err
			}
			o.TrackingToken = tok
			return json.Marshal(o)
		})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", res.Location)
		w.Header().Set("Content-Type", "application/json")
		if res.Replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		w.WriteHeader(res.Status)
		_, _ = w.Write(res.Body)
	})
}

// handleOrderGet handles "GET /v1/orders/{id}": the order, to its parties;
// a tracking link reads its status only.
func handleOrderGet(log *zap.Logger, store *Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := orderID(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if who := principal(r); who.Role == token.AudienceTrack && who.ID != id {
			// The token names its order: no look-up, nothing revealed.
			writeError(w, r, log, auth.Forbidden("this tracking token is for another order"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), dbTimeout)
		defer cancel()
		o, err := store.Get(ctx, id)
		if err == nil && !party(principal(r), o) {
			err = ErrNotFound
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if principal(r).Role == token.AudienceTrack {
			httpx.Encode(w, http.StatusOK, statusView{ID: o.ID, Status: o.Status, UpdatedAt: o.UpdatedAt, History: o.History})
			return
		}
		httpx.Encode(w, http.StatusOK, o)
	})
}

// principal returns the request's principal (every orders route but the
// operational ones is guarded).
func principal(r *http.Request) auth.Principal {
	pr, _ := auth.From(r.Context())
	return pr
}

// statusRequest is the body of POST /v1/orders/{id}/status.
type statusRequest struct {
	Status string `json:"status"`
}

// handleOrderStatus handles "POST /v1/orders/{id}/status": the moves of the
// order's parties (mayMove says whose), and any an operator makes.
func handleOrderStatus(log *zap.Logger, store *Store) http.Handler {
	return orderUpdate(log, func(req statusRequest) error {
		if !apiMoves[req.Status] {
			return httpx.FieldProblem("status", "must be one of accepted, picked_up, delivered, cancelled")
		}
		return nil
	}, func(ctx context.Context, who auth.Principal, id string, req statusRequest) (Order, error) {
		return store.Move(ctx, id, req.Status, time.Now().UTC(), func(o Order) error { return mayMove(who, o, req.Status) })
	})
}

// riderRequest is the body of POST /v1/orders/{id}/rider.
type riderRequest struct {
	RiderID string `json:"rider_id"`
}

// handleRiderAssign handles "POST /v1/orders/{id}/rider" (operators only:
// the rider assigned is the one the order's tracking link follows).
func handleRiderAssign(log *zap.Logger, store *Store) http.Handler {
	return orderUpdate(log, func(req riderRequest) error {
		if req.RiderID == "" || len(req.RiderID) > maxIDLen || strings.ContainsAny(req.RiderID, ".*#/ ") {
			// The id becomes a routing key ("rider.<id>"): no dots or wildcards.
			return httpx.FieldProblem("rider_id", "must be 1 to 128 characters without '.', '*', '#', '/' or spaces")
		}
		return nil
	}, func(ctx context.Context, _ auth.Principal, id string, req riderRequest) (Order, error) {
		return store.AssignRider(ctx, id, req.RiderID, time.Now().UTC())
	})
}

// orderUpdate serves a change to one order: it decodes the request, checks
// it, applies it as the request's principal within dbTimeout and answers
// with the order as it is now.
func orderUpdate[T any](log *zap.Logger, check func(T) error, apply func(ctx context.Context, who auth.Principal, id string, req T) (Order, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := orderID(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		req, err := httpx.Decode[T](w, r, 4<<10)
		if err == nil {
			err = check(req)
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), dbTimeout)
		defer cancel()
		o, err := apply(ctx, principal(r), id, req)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		httpx.Encode(w, http.StatusOK, o)
	})
}

func orderID(r *http.Request) (string, error) {
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		return "", httpx.FieldProblem("id", "must be a UUID")
	}
	return id.String(), nil
}

// writeError maps the store's errors to problem responses; anything else is
// logged once, by httpx.Error, as unexpected.
func writeError(w http.ResponseWriter, r *http.Request, log *zap.Logger, err error) {
	var illegal *IllegalMoveError
	var forbidden *ForbiddenError
	var line *LineError
	switch {
	case errors.As(err, &forbidden):
		err = auth.Forbidden(forbidden.Reason)
	case errors.As(err, &line):
		status := http.StatusUnprocessableEntity
		if line.Reason == linePriceChanged {
			status = http.StatusConflict
		}
		p := httpx.NewProblem(status, line.Error())
		p.Field = line.Field()
		err = p
	case errors.Is(err, ErrZeroTotal):
		p := httpx.NewProblem(http.StatusUnprocessableEntity, ErrZeroTotal.Error())
		p.Field = "items"
		err = p
	case errors.Is(err, ErrNotFound):
		err = httpx.NewProblem(http.StatusNotFound, "no such order")
	case errors.Is(err, ErrKeyInFlight):
		err = httpx.NewProblem(http.StatusConflict, ErrKeyInFlight.Error())
	case errors.Is(err, ErrKeyReused):
		err = httpx.NewProblem(http.StatusUnprocessableEntity, ErrKeyReused.Error())
	case errors.As(err, &illegal):
		err = httpx.NewProblem(http.StatusConflict, illegal.Error())
	case postgres.IsUnavailable(err):
		log.Warn("database unavailable", zap.String("path", r.URL.Path), zap.Error(err))
		err = httpx.Unavailable("the order store")
	}
	httpx.Error(w, r, log, err)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
