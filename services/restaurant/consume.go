package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// handleRestaurantEvent records, once per event, a notification on the
// restaurant's feed: a new order, its payment, its cancellation.
func handleRestaurantEvent(db *pgxpool.Pool) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		var restaurantID string
		var total *int64
		switch e.Type {
		case events.OrderPlaced:
			var p events.Placed
			if err := events.DecodeData(e, &p); err != nil {
				return err
			}
			restaurantID, total = p.RestaurantID, &p.TotalCents
		case events.OrderPaid, events.OrderCancelled:
			var s struct {
				RestaurantID string `json:"restaurant_id"`
			}
			if err := events.DecodeData(e, &s); err != nil {
				return err
			}
			restaurantID = s.RestaurantID
		default:
			return broker.Permanent(fmt.Errorf("restaurant-notify does not handle %s", e.Type))
		}
		if restaurantID == "" && e.Type == events.OrderPaid {
			// order.paid comes from the payment service and carries no
			// restaurant: look it up on the order.
			if err := db.QueryRow(ctx, "SELECT restaurant_id FROM orders WHERE id = $1", e.OrderID).Scan(&restaurantID); err != nil {
				return fmt.Errorf("find the order's restaurant: %w", err)
			}
		}
		if restaurantID == "" {
			return broker.Permanent(fmt.Errorf("%s names no restaurant", e.Type))
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueueRestaurant, d.MessageID)
			if err != nil || !first {
				return err
			}
			_, err = tx.Exec(ctx, `INSERT INTO restaurant_notifications (message_id, restaurant_id, order_id, event_type, total_cents)
				VALUES ($1, $2, $3, $4, $5)`, d.MessageID, restaurantID, e.OrderID, e.Type, total)
			if err != nil {
				return fmt.Errorf("record notification: %w", err)
			}
			return nil
		})
	}
}
