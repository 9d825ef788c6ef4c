package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// Publisher publishes one message; *broker.Publisher is one.
type Publisher interface {
	Publish(ctx context.Context, m broker.Message) error
}

// handleOrderEvent keeps tracking_orders up to date from the durable
// "tracking" queue (every order event): each order's destination, rider and
// newest status. Events may arrive out of order or twice: a status or an
// assignment only replaces an older one, and the inbox row makes a
// redelivery change nothing.
//
// After the commit it publishes what is now stored as a transient
// "order.<id>" message on the locations exchange, so every tracking instance
// with a customer watching that order (and only those: they bind the key
// while someone watches) passes the change on. The "tracking" queue has
// competing consumers, so this is how the instances that did not take the
// event hear of it. A lost live update costs nothing lasting: the table has
// it, and a reconnecting customer reads it.
func handleOrderEvent(db *pgxpool.Pool, live Publisher, log *zap.Logger) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		effect, err := orderEffect(e)
		if err != nil {
			return err
		}
		if effect == nil {
			return nil // an event tracking has no use for
		}
		var u orderUpdate
		err = postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueueTracking, d.MessageID)
			if err != nil {
				return err
			}
			if first {
				if err := effect(ctx, tx); err != nil {
					return err
				}
			}
			u, err = loadOrder(ctx, tx, e.OrderID)
			return err
		})
		if err != nil {
			return err
		}
		body, err := json.Marshal(u)
		if err != nil {
			return fmt.Errorf("encode order update: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := live.Publish(pctx, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: orderKey(e.OrderID),
			Body: body, Transient: true}); err != nil {
			log.Warn("live order update not published", append(d.Fields(), zap.Error(err))...)
		}
		return nil
	}
}

// orderEffect returns what an event changes in tracking_orders, or nil.
func orderEffect(e events.Envelope) (func(context.Context, pgx.Tx) error, error) {
	switch e.Type {
	case events.OrderRiderAssigned:
		var a events.RiderAssigned
		if err := events.DecodeData(e, &a); err != nil {
			return nil, err
		}
		if !validRiderID(a.RiderID) {
			return nil, broker.Permanent(fmt.Errorf("rider id %q", a.RiderID))
		}
		return func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO tracking_orders (order_id, rider_id, rider_at) VALUES ($1, $2, $3)
				ON CONFLICT (order_id) DO UPDATE SET rider_id = excluded.rider_id, rider_at = excluded.rider_at, updated_at = now()
				WHERE tracking_orders.rider_at IS NULL OR tracking_orders.rider_at < excluded.rider_at`,
				e.OrderID, a.RiderID, e.OccurredAt)
			if err != nil {
				return fmt.Errorf("store rider: %w", err)
			}
			return nil
		}, nil
	}
	status, ok := statusOf(e.Type)
	if !ok {
		return nil, nil
	}
	var lat, lng *float64
	var line1 *string
	if e.Type == events.OrderPlaced {
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return nil, err
		}
		if a := p.DeliveryAddress; validLatLng(a.Lat, a.Lng) && (a.Lat != 0 || a.Lng != 0) {
			lat, lng, line1 = &a.Lat, &a.Lng, &a.Line1
		}
	}
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO tracking_orders (order_id, status, status_at, dest_lat, dest_lng, dest_line1)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (order_id) DO UPDATE SET
				status = CASE WHEN tracking_orders.status_at IS NULL OR tracking_orders.status_at < excluded.status_at
					THEN excluded.status ELSE tracking_orders.status END,
				status_at = greatest(tracking_orders.status_at, excluded.status_at),
				dest_lat = coalesce(excluded.dest_lat, tracking_orders.dest_lat),
				dest_lng = coalesce(excluded.dest_lng, tracking_orders.dest_lng),
				dest_line1 = coalesce(excluded.dest_line1, tracking_orders.dest_line1),
				updated_at = now()`,
			e.OrderID, status, e.OccurredAt, lat, lng, line1)
		if err != nil {
			return fmt.Errorf("store status: %w", err)
		}
		return nil
	}, nil
}

// statusOf maps an order event's routing key to the status it announces.
func statusOf(routingKey string) (string, bool) {
	for status, key := range events.StatusEvent {
		if key == routingKey {
			return status, true
		}
	}
	return "", false
}

func validLatLng(lat, lng float64) bool {
	return !math.IsNaN(lat) && !math.IsNaN(lng) && lat >= -90 && lat <= 90 && lng >= -180 && lng <= 180
}

// errUnknownOrder means tracking has not heard of the order (yet).
var errUnknownOrder = errors.New("order not known to tracking")

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// loadOrder returns what tracking knows of an order.
func loadOrder(ctx context.Context, db querier, orderID string) (orderUpdate, error) {
	u := orderUpdate{OrderID: orderID}
	var riderAt, statusAt *time.Time
	var lat, lng *float64
	var line1 string
	err := db.QueryRow(ctx, `SELECT coalesce(rider_id, ''), rider_at, coalesce(status, ''), status_at, dest_lat, dest_lng,
		coalesce(dest_line1, '') FROM tracking_orders WHERE order_id = $1`, orderID).
		Scan(&u.RiderID, &riderAt, &u.Status, &statusAt, &lat, &lng, &line1)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, errUnknownOrder
	}
	if err != nil {
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
