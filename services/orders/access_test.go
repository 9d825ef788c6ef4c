package main

import (
	"errors"
	"testing"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/token"
)

func TestMayMove(t *testing.T) {
	o := Order{ID: "o1", CustomerID: "c1", RestaurantID: "r1", RiderID: "d1"}
	unassigned := o
	unassigned.RiderID = ""
	who := func(role, id string) auth.Principal { return auth.Principal{Role: role, ID: id} }
	const (
		ok = iota
		notFound
		forbidden
		illegal
	)
	tests := []struct {
		name   string
		p      auth.Principal
		order  Order
		status string // the order's
		to     string
		want   int
	}{
		{"CustomerCancelsPlaced", who(token.AudienceCustomer, "c1"), o, events.StatusPlaced, events.StatusCancelled, ok},
		{"CustomerCancelsPaid", who(token.AudienceCustomer, "c1"), o, events.StatusPaid, events.StatusCancelled, ok},
		{"ErrCustomerCancelsAccepted", who(token.AudienceCustomer, "c1"), o, events.StatusAccepted, events.StatusCancelled, illegal},
		{"ErrCustomerAccepts", who(token.AudienceCustomer, "c1"), o, events.StatusPaid, events.StatusAccepted, forbidden},
		{"ErrOtherCustomer", who(token.AudienceCustomer, "c2"), o, events.StatusPlaced, events.StatusCancelled, notFound},
		{"RestaurantAccepts", who(token.AudienceRestaurant, "r1"), o, events.StatusPaid, events.StatusAccepted, ok},
		{"RestaurantCancelsAccepted", who(token.AudienceRestaurant, "r1"), o, events.StatusAccepted, events.StatusCancelled, ok},
		{"ErrRestaurantPicksUp", who(token.AudienceRestaurant, "r1"), o, events.StatusAccepted, events.StatusPickedUp, forbidden},
		{"ErrOtherRestaurant", who(token.AudienceRestaurant, "r2"), o, events.StatusPaid, events.StatusAccepted, notFound},
		{"RiderPicksUp", who(token.AudienceRider, "d1"), o, events.StatusAccepted, events.StatusPickedUp, ok},
		{"RiderDelivers", who(token.AudienceRider, "d1"), o, events.StatusPickedUp, events.StatusDelivered, ok},
		{"ErrRiderCancels", who(token.AudienceRider, "d1"), o, events.StatusAccepted, events.StatusCancelled, forbidden},
		{"ErrOtherRider", who(token.AudienceRider, "d2"), o, events.StatusAccepted, events.StatusPickedUp, notFound},
		{"ErrNoRiderYet", who(token.AudienceRider, ""), unassigned, events.StatusAccepted, events.StatusPickedUp, notFound},
		{"OpsAnything", who(token.AudienceOps, "op"), o, events.StatusAccepted, events.StatusPickedUp, ok},
		{"ErrTrackingLink", who(token.AudienceTrack, "o1"), o, events.StatusPlaced, events.StatusCancelled, forbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.order.Status = tt.status
			err := mayMove(tt.p, tt.order, tt.to)
			var f *ForbiddenError
			var m *IllegalMoveError
			got := -1 // an error of no kind expected
			switch {
			case err == nil:
				got = ok
			case errors.Is(err, ErrNotFound):
				got = notFound
			case errors.As(err, &f):
				got = forbidden
			case errors.As(err, &m):
				got = illegal
			}
			if got != tt.want {
				t.Fatalf("mayMove = %v, want outcome %d", err, tt.want)
			}
		})
	}
}
