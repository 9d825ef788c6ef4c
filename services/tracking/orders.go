package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

func validLatLng(lat, lng float64) bool {
	return !math.IsNaN(lat) && !math.IsNaN(lng) && lat >= -90 && lat <= 90 && lng >= -180 && lng <= 180
}

// errUnknownOrder means tracking has not heard of the order (yet).
var errUnknownOrder = errors.New("order not known to tracking")

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// orderColumns are what loadOrder and loadOrders read of tracking_orders.
const orderColumns = `order_id::text, coalesce(rider_id, ''), rider_at, coalesce(status, ''), status_at, dest_lat, dest_lng,
	coalesce(dest_line1, '')`

// loadOrder returns what tracking knows of an order.
func loadOrder(ctx context.Context, db querier, orderID string) (orderUpdate, error) {
	u, err := scanOrder(db.QueryRow(ctx, "SELECT "+orderColumns+" FROM tracking_orders WHERE order_id = $1", orderID))
	if errors.Is(err, pgx.ErrNoRows) {
		return orderUpdate{OrderID: orderID}, errUnknownOrder
	}
	return u, err
}

// loadOrders returns what tracking knows of each of the orders.
func loadOrders(ctx context.Context, tx pgx.Tx, orderIDs []string) ([]orderUpdate, error) {
	rows, err := tx.Query(ctx, "SELECT "+orderColumns+" FROM tracking_orders WHERE order_id = ANY($1)", orderIDs)
	if err != nil {
		return nil, fmt.Errorf("load orders: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (orderUpdate, error) { return scanOrder(r) })
}

func scanOrder(row pgx.Row) (orderUpdate, error) {
	var u orderUpdate
	var riderAt, statusAt *time.Time
	var lat, lng *float64
	var line1 string
	if err := row.Scan(&u.OrderID, &u.RiderID, &riderAt, &u.Status, &statusAt, &lat, &lng, &line1); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return u, err
		}
		return u, fmt.Errorf("load order: %w", err)
	}
	if riderAt != nil {
		u.RiderAt = riderAt.UTC()
	}
	if statusAt != nil {
		u.StatusAt = statusAt.UTC()
	}
	if lat != nil && lng != nil {
		u.Destination = &Destination{Lat: *lat, Lng: *lng, Line1: line1}
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
