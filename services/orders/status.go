package main

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
)

// handlePaymentEvents applies order.paid and order.payment_failed, consumed
// from the order-status queue, to the order.
func handlePaymentEvents(log *zap.Logger, store *Store) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		var to string
		switch e.Type {
		case events.OrderPaid:
			to = events.StatusPaid
		case events.OrderPaymentFailed:
			to = events.StatusPaymentFailed
		default:
			return broker.Permanent(errors.New("order-status does not handle " + e.Type))
		}
		applied, err := store.ApplyPaymentEvent(ctx, broker.QueueOrderStatus, e, to)
		if errors.Is(err, ErrNotFound) {
			return broker.Permanent(err)
		}
		if err != nil {
			return err
		}
		if !applied {
			log.Info("payment event skipped: already applied or no longer applies", d.Fields()...)
		}
		return nil
	}
}
