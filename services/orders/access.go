package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/token"
)

// Who may do what to an order, beyond the roles each route admits
// (routes.go). A principal who is no party to an order is told it does not
// exist (404), as for an order that does not: an id is no proof that the
// order is one's business, and a 403 would confirm that it exists.

// ForbiddenError is an act the principal's role may never do to an order
// that is its business: a customer accepting its own order, say.
type ForbiddenError struct{ Reason string }

func (e *ForbiddenError) Error() string { return e.Reason }

// party reports whether o is p's business: the customer who placed it, its
// restaurant, the rider assigned to it, its tracking link, or an operator.
func party(p auth.Principal, o Order) bool {
	switch p.Role {
	case token.AudienceOps:
		return true
	case token.AudienceCustomer:
		return o.CustomerID == p.ID
	case token.AudienceRestaurant:
		return o.RestaurantID == p.ID
	case token.AudienceRider:
		return o.RiderID != "" && o.RiderID == p.ID
	case token.AudienceTrack:
		return o.ID == p.ID
	}
	return false
}

// roleMoves are the statuses each role may move its orders to; an operator
// may make every move of the order's life.
var roleMoves = map[string][]string{
	token.AudienceCustomer:   {events.StatusCancelled},
	token.AudienceRestaurant: {events.StatusAccepted, events.StatusCancelled},
	token.AudienceRider:      {events.StatusPickedUp, events.StatusDelivered},
}

// customerCancels are the statuses a customer may still cancel from: once
// the restaurant has accepted, only the restaurant (or an operator) can.
var customerCancels = []string{events.StatusPlaced, events.StatusPaid}

// mayMove returns nil when p may move o to status to as far as who p is
// goes (whether the order's life allows the move is canMove's), ErrNotFound
// when o is not p's business, a *ForbiddenError when p's role never makes
// that move, and an *IllegalMoveError for a customer cancelling too late.
func mayMove(p auth.Principal, o Order, to string) error {
	if !party(p, o) {
		return ErrNotFound
	}
	if p.Role == token.AudienceOps {
		return nil
	}
	if !slices.Contains(roleMoves[p.Role], to) {
		return &ForbiddenError{Reason: fmt.Sprintf("a %s may not move an order to %s", p.Role, to)}
	}
	if p.Role == token.AudienceCustomer && !slices.Contains(customerCancels, o.Status) {
		return &IllegalMoveError{From: o.Status, To: to, Why: "only the restaurant can cancel an order it has accepted"}
	}
	return nil
}

// statusView is what a tracking link may read of its order: how far it
// got, and not who ordered it, what or where to. A tracking link is meant
// to be shared.
type statusView struct {
	ID        string         `json:"id"`
	Status    string         `json:"status"`
	UpdatedAt time.Time      `json:"updated_at"`
	History   []StatusChange `json:"history,omitempty"`
}
