package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// handleOrderEvent keeps tracking_orders up to date from the durable
// "tracking" queue: each order's rider and its newest status. Events may
// arrive out of order, so a status only replaces an older one.
func handleOrderEvent(db *pgxpool.Pool) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueueTracking, d.MessageID)
			if err != nil || !first {
				return err
			}
			if e.Type == events.OrderRiderAssigned {
				var a events.RiderAssigned
				if err := events.DecodeData(e, &a); err != nil {
					return err
				}
				if !validRiderID(a.RiderID) {
					return broker.Permanent(fmt.Errorf("rider id %q", a.RiderID))
				}
				_, err = tx.Exec(ctx, `INSERT INTO tracking_orders (order_id, rider_id) VALUES ($1, $2)
					ON CONFLICT (order_id) DO UPDATE SET rider_id = excluded.rider_id, updated_at = now()`, e.OrderID, a.RiderID)
				return err
			}
			status, ok := statusOf(e.Type)
			if !ok {
				return nil // an event tracking has no use for
			}
			_, err = tx.Exec(ctx, `INSERT INTO tracking_orders (order_id, status, status_at) VALUES ($1, $2, $3)
				ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, status_at = excluded.status_at, updated_at = now()
				WHERE tracking_orders.status_at IS NULL OR tracking_orders.status_at < excluded.status_at`,
				e.OrderID, status, e.OccurredAt)
			return err
		})
	}
}

// trackedOrder is what tracking knows of an order.
type trackedOrder struct {
	RiderID  string
	Status   string
	StatusAt time.Time
}

// errUnknownOrder means tracking has not heard of the order (yet).
var errUnknownOrder = errors.New("order not known to tracking")

func loadOrder(ctx context.Context, db *pgxpool.Pool, orderID string) (trackedOrder, error) {
	var o trackedOrder
	var at *time.Time
	err := db.QueryRow(ctx, "SELECT coalesce(rider_id, ''), coalesce(status, ''), status_at FROM tracking_orders WHERE order_id = $1", orderID).
		Scan(&o.RiderID, &o.Status, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, errUnknownOrder
	}
	if at != nil {
		o.StatusAt = at.UTC()
	}
	return o, err
}

// loadPosition returns a rider's latest stored fix.
func loadPosition(ctx context.Context, db *pgxpool.Pool, rider string) (Fix, bool, error) {
	f := Fix{RiderID: rider}
	err := db.QueryRow(ctx, "SELECT lat, lng, heading, speed_kmh, seq, ts FROM rider_positions WHERE rider_id = $1", rider).
		Scan(&f.Lat, &f.Lng, &f.Heading, &f.SpeedKmh, &f.Seq, &f.TS)
	if errors.Is(err, pgx.ErrNoRows) {
		return f, false, nil
	}
	f.TS = f.TS.UTC()
	return f, err == nil, err
}
