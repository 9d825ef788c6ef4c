package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dabba/dabba/shared/events"
)

func validLatLng(lat, lng float64) bool {
	return !math.IsNaN(lat) && !math.IsNaN(lng) && lat >= -90 && lat <= 90 && lng >= -180 && lng <= 180
}

// errUnknownOrder means there is no such order.
var errUnknownOrder = errors.New("no such order")

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// loadOrder reads what a customer's page shows of an order from the orders
// database: its status (with when it was reached, from its history), its
// rider and where it goes. The rider's time is the order's last change, no
// earlier than the assignment: a late event of an older assignment then
// cannot replace it.
func loadOrder(ctx context.Context, db querier, orderID string) (orderUpdate, error) {
	u := orderUpdate{OrderID: orderID}
	var statusAt *time.Time
	var updatedAt time.Time
	var addr events.Address
	err := db.QueryRow(ctx, `SELECT o.status, coalesce(o.rider_id, ''), o.updated_at, h.at, o.delivery_address
		FROM orders o LEFT JOIN order_status_history h ON h.order_id = o.id AND h.status = o.status
		WHERE o.id = $1`, orderID).Scan(&u.Status, &u.RiderID, &updatedAt, &statusAt, &addr)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, errUnknownOrder
	}
	if err != nil {
		return u, fmt.Errorf("load order: %w", err)
	}
	u.StatusAt = updatedAt.UTC()
	if statusAt != nil {
		u.StatusAt = statusAt.UTC()
	}
	if u.RiderID != "" {
		u.RiderAt = updatedAt.UTC()
	}
	if validLatLng(addr.Lat, addr.Lng) && (addr.Lat != 0 || addr.Lng != 0) {
		u.Destination = &Destination{Lat: addr.Lat, Lng: addr.Lng, Line1: addr.Line1}
	}
	return u, nil
}

// loadPosition returns a rider's latest stored fix.
func loadPosition(ctx context.Context, db querier, rider string) (Fix, bool, error) {
	f := Fix{RiderID: rider}
	err := db.QueryRow(ctx, "SELECT lat, lng, heading, speed_kmh, seq, ts FROM rider_positions WHERE rider_id = $1", rider).
		Scan(&f.Lat, &f.Lng, &f.Heading, &f.SpeedKmh, &f.Seq, &f.TS)
	if errors.Is(err, pgx.ErrNoRows) {
		return f, false, nil
	}
	if err != nil {
		return f, false, fmt.Errorf("load position: %w", err)
	}
	f.TS = f.TS.UTC()
	return f, true, nil
}
