package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// notification is one event of an order, told to its restaurant.
type notification struct {
	RestaurantID string // empty: look it up from the order's earlier notifications
	TotalCents   *int64
}

// errRestaurantUnknown means an order.paid arrived before the order's
// order.placed was recorded (it is waiting for a retry, say). A transient
// error: by the next attempt order.placed has normally been processed.
var errRestaurantUnknown = errors.New("restaurant of the order not known yet (order.placed not processed)")

// handleRestaurantEvent records a notification for the order's restaurant,
// keyed by the event id, in the same transaction as the inbox row.
func handleRestaurantEvent(log *zap.Logger, db *pgxpool.Pool) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		if _, err := uuid.Parse(e.OrderID); err != nil {
			return fmt.Errorf("%w: order_id %q is not a UUID", events.ErrMalformed, e.OrderID)
		}
		n, err := notificationOf(e)
		if err != nil {
			return err
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueueRestaurant, e.ID)
			if err != nil {
				return err
			}
			if !first {
				log.Info("duplicate event skipped", d.Fields()...)
				return nil
			}
			if n.RestaurantID == "" {
				err := tx.QueryRow(ctx, `SELECT restaurant_id FROM restaurant_notifications
					WHERE order_id = $1 ORDER BY created_at LIMIT 1`, e.OrderID).Scan(&n.RestaurantID)
				if errors.Is(err, pgx.ErrNoRows) {
					return errRestaurantUnknown
				}
				if err != nil {
					return fmt.Errorf("look up restaurant: %w", err)
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO restaurant_notifications (message_id, restaurant_id, order_id, event_type, total_cents)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING`,
				e.ID, n.RestaurantID, e.OrderID, e.Type, n.TotalCents); err != nil {
				return fmt.Errorf("insert notification: %w", err)
			}
			return nil
		})
	}
}

// notificationOf reads what the restaurant is told from the event's payload.
func notificationOf(e events.Envelope) (notification, error) {
	switch e.Type {
	case events.OrderPlaced:
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return notification{}, err
		}
		if p.RestaurantID == "" {
			return notification{}, fmt.Errorf("%w: order.placed without restaurant_id", events.ErrMalformed)
		}
		return notification{RestaurantID: p.RestaurantID, TotalCents: &p.TotalCents}, nil
	case events.OrderPaid:
		var p events.Paid
		if err := events.DecodeData(e, &p); err != nil {
			return notification{}, err
		}
		return notification{RestaurantID: p.RestaurantID, TotalCents: &p.AmountCents}, nil
	case events.OrderCancelled:
		var p events.StatusChanged
		if err := events.DecodeData(e, &p); err != nil {
			return notification{}, err
		}
		// Cancelled orders always passed through order.placed, so the
		// lookup covers an event without restaurant_id.
		return notification{RestaurantID: p.RestaurantID}, nil
	}
	return notification{}, broker.Permanent(fmt.Errorf("restaurant-notify does not handle %s", e.Type))
}
