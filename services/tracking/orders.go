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
// rider, where it goes, and whether its rider was near. The rider's time is the order's last change, no
// earlier than the assignment: a late event of an older assignment then
// cannot replace it.
func loadOrder(ctx context.Context, db querier, orderID string) (orderUpdate, error) {
	u := orderUpdate{OrderID: orderID}
	var statusAt *time.Time
	var updatedAt time.Time
	var addr events.Address
	var nearRider *string
	var nearM *float64
	var nearAt *time.Time
	err := db.QueryRow(ctx, `SELECT o.status, coalesce(o.rider_id, ''), o.updated_at, h.at, o.delivery_address, a.rider_id, a.distance_m, a.at
		FROM orders o LEFT JOIN order_status_history h ON h.order_id = o.id AND h.status = o.status
		LEFT JOIN tracking_alerts a ON a.order_id = o.id AND a.kind = $2
		WHERE o.id = $1`, orderID, events.OrderRiderNear).Scan(&u.Status, &u.RiderID, &updatedAt, &statusAt, &addr, &nearRider, &nearM, &nearAt)
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
	u.Destination = destinationOf(addr)
	if nearRider != nil {
		u.Near = &nearMsg{Type: "rider_near", OrderID: orderID, RiderID: *nearRider, DistanceM: round1(*nearM), At: nearAt.UTC()}
	}
	return u, nil
}

// loadPosition returns the latest fix of rider stored for orderID: the
// rider's position when the customer connects, read from the history.
func loadPosition(ctx context.Context, db querier, orderID, rider string) (Fix, bool, error) {
	f := Fix{RiderID: rider}
	var heading, speed float32
	err := db.QueryRow(ctx, `SELECT lat, lng, heading, speed_kmh, seq, ts FROM rider_fixes
		WHERE order_id = $1 AND rider_id = $2 ORDER BY seq DESC LIMIT 1`, orderID, rider).
		Scan(&f.Lat, &f.Lng, &heading, &speed, &f.Seq, &f.TS)
	if errors.Is(err, pgx.ErrNoRows) {
		return f, false, nil
	}
	if err != nil {
		return f, false, fmt.Errorf("load position: %w", err)
	}
	f.Heading, f.SpeedKmh, f.TS = float64(heading), float64(speed), f.TS.UTC()
	return f, true, nil
}
