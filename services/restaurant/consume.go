package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// newConsumer records a notification for the order's restaurant for each
// order.placed, order.paid, order.cancelled, order.refunded and
// order.rider_arriving (the rider is about to come for it), keyed by the
// event id: the notifications are their own inbox.
func newConsumer(log *zap.Logger, db *pgxpool.Pool) *consumer.Consumer {
	return consumer.New(broker.QueueRestaurant, db, log,
		consumer.On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Placed]) error {
			rows := make([]notification, 0, len(batch))
			for _, e := range batch {
				if e.Data.RestaurantID == "" {
					e.Fail(fmt.Errorf("%w: order.placed without restaurant_id", events.ErrMalformed))
					continue
				}
				rows = append(rows, notification{e.ID, e.OrderID, e.Type, e.Data.RestaurantID, &e.Data.TotalCents, e.Fail})
			}
			return notify(ctx, tx, rows)
		}),
		consumer.On(events.OrderPaid, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Paid]) error {
			rows := make([]notification, len(batch))
			for i, e := range batch {
				rows[i] = notification{e.ID, e.OrderID, e.Type, e.Data.RestaurantID, &e.Data.AmountCents, e.Fail}
			}
			return notify(ctx, tx, rows)
		}),
		consumer.On(events.OrderCancelled, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.StatusChanged]) error {
			rows := make([]notification, len(batch))
			for i, e := range batch {
				rows[i] = notification{e.ID, e.OrderID, e.Type, e.Data.RestaurantID, nil, e.Fail}
			}
			return notify(ctx, tx, rows)
		}),
		consumer.On(events.OrderRefunded, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Refunded]) error {
			rows := make([]notification, len(batch))
			for i, e := range batch {
				rows[i] = notification{e.ID, e.OrderID, e.Type, e.Data.RestaurantID, &e.Data.AmountCents, e.Fail}
			}
			return notify(ctx, tx, rows)
		}),
		consumer.On(events.OrderRiderArriving, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.RiderArriving]) error {
			rows := make([]notification, len(batch))
			for i, e := range batch {
				rows[i] = notification{e.ID, e.OrderID, e.Type, e.Data.RestaurantID, nil, e.Fail}
			}
			return notify(ctx, tx, rows)
		}),
	).EffectsKeyedByEvent()
}

// notification is one event of an order, told to its restaurant.
type notification struct {
	MessageID, OrderID, EventType string
	RestaurantID                  string // empty: the one of the order's earlier notifications
	TotalCents                    *int64
	fail                          func(error)
}

// errRestaurantUnknown means an event without a restaurant arrived before
// the order's order.placed was recorded (it is waiting for a retry, say). A
// transient error: by the next attempt order.placed has normally been
// processed.
var errRestaurantUnknown = errors.New("restaurant of the order not known yet (order.placed not processed)")

// notify inserts notifications with one statement. One without a
// restaurant takes the restaurant of the order's first notification (an
// order.placed earlier in the same batch counts); if there is none yet, it
// fails alone.
func notify(ctx context.Context, tx pgx.Tx, rows []notification) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	ids, orders, types, restaurants, totals := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]*int64, n)
	for i, r := range rows {
		ids[i], orders[i], types[i], restaurants[i], totals[i] = r.MessageID, r.OrderID, r.EventType, r.RestaurantID, r.TotalCents
	}
	res, err := tx.Query(ctx, `
		WITH b AS (
			SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[])
				AS b (message_id, order_id, event_type, restaurant_id, total_cents)
		), r AS (
			SELECT b.message_id, b.order_id, b.event_type, b.total_cents,
				coalesce(nullif(b.restaurant_id, ''), (SELECT n.restaurant_id FROM restaurant_notifications n
					WHERE n.order_id = b.order_id ORDER BY n.created_at LIMIT 1)) AS restaurant_id
			FROM b
		), inserted AS (
			INSERT INTO restaurant_notifications (message_id, restaurant_id, order_id, event_type, total_cents)
			SELECT message_id, restaurant_id, order_id, event_type, total_cents FROM r WHERE restaurant_id IS NOT NULL
			ON CONFLICT (message_id) DO NOTHING
		)
		SELECT message_id FROM r WHERE restaurant_id IS NULL`,
		ids, orders, types, restaurants, totals)
	if err != nil {
		return fmt.Errorf("insert notifications: %w", err)
	}
	unknown, err := pgx.CollectRows(res, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("insert notifications: %w", err)
	}
	for _, r := range rows {
		if slices.Contains(unknown, r.MessageID) {
			r.fail(errRestaurantUnknown)
		}
	}
	return nil
}
