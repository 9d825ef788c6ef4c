package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// Publisher publishes one message; *broker.Publisher is one.
type Publisher interface {
	Publish(ctx context.Context, m broker.Message) error
}

// newConsumer keeps tracking_orders up to date from the durable "tracking"
// queue (every order event): each order's destination, rider and newest
// status. Events may arrive out of order or twice: a status or an
// assignment only replaces an older one, and the inbox makes a redelivery
// change nothing.
//
// After the commit it publishes what is now stored as a transient
// "order.<id>" message on the locations exchange, so every tracking instance
// with a customer watching that order (and only those: they bind the key
// while someone watches) passes the change on. The "tracking" queue has
// competing consumers, so this is how the instances that did not take the
// event hear of it. A lost live update costs nothing lasting: the table has
// it, and a reconnecting customer reads it.
func newConsumer(db *pgxpool.Pool, live Publisher, log *zap.Logger) *consumer.Consumer {
	apply := func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[json.RawMessage]) error {
		for _, e := range batch {
			effect, err := orderEffect(events.Envelope{ID: e.ID, Type: e.Type, OrderID: e.OrderID, OccurredAt: e.OccurredAt, Data: e.Data})
			if err != nil {
				e.Fail(err)
				continue
			}
			if effect == nil {
				continue // an event tracking has no use for
			}
			if err := effect(ctx, tx); err != nil {
				return err
			}
			u, err := loadOrder(ctx, tx, e.OrderID)
			if err != nil {
				return err
			}
			consumer.AfterCommit(ctx, func() { publishUpdate(ctx, live, log, e.Delivery, u) })
		}
		return nil
	}
	routes := make([]consumer.Route, len(events.RoutingKeys))
	for i, key := range events.RoutingKeys {
		routes[i] = consumer.On(key, apply)
	}
	return consumer.New(broker.QueueTracking, db, log, routes...)
}

// publishUpdate tells the tracking instances whose customers watch u's
// order what is now stored of it.
func publishUpdate(ctx context.Context, live Publisher, log *zap.Logger, d broker.Delivery, u orderUpdate) {
	body, err := json.Marshal(u)
	if err != nil {
		log.Error("encode order update", append(d.Fields(), zap.Error(err))...)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := live.Publish(pctx, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: orderKey(u.OrderID),
		Body: body, Transient: true}); err != nil {
		log.Warn("live order update not published", append(d.Fields(), zap.Error(err))...)
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
