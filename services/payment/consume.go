package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
)

// Charger is the part of the payment provider the consumer uses.
type Charger interface {
	Charge(ctx context.Context, req gateway.ChargeRequest, idempotencyKey string) (gateway.Charge, error)
}

// handleOrderPlaced charges a placed order and announces the outcome.
//
// The provider's idempotency key is the order id, so however often
// order.placed is delivered (redelivery after a crash, a duplicate publish),
// the card is charged once. The payment row, the inbox row and the outbox
// event (order.paid or order.payment_failed) are written in one transaction.
func handleOrderPlaced(log *zap.Logger, db *pgxpool.Pool, gw Charger) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		if e.Type != events.OrderPlaced {
			return broker.Permanent(fmt.Errorf("payment does not handle %s", e.Type))
		}
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return err
		}
		if p.TotalCents < 0 {
			return broker.Permanent(fmt.Errorf("negative total %d", p.TotalCents))
		}
		charge, err := gw.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: p.TotalCents, Currency: "INR"}, "order-"+e.OrderID)
		declined := errors.Is(err, gateway.ErrDeclined)
		if err != nil && !declined {
			return fmt.Errorf("charge order %s: %w", e.OrderID, err)
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueuePayment, d.MessageID)
			if err != nil || !first {
				return err
			}
			status, reason := "succeeded", ""
			if declined {
				status, reason = "declined", "card declined by the provider"
			}
			tag, err := tx.Exec(ctx, `INSERT INTO payments (order_id, status, charge_id, amount_cents, reason)
				VALUES ($1, $2, $3, $4, nullif($5, '')) ON CONFLICT (order_id) DO NOTHING`,
				e.OrderID, status, charge.ID, p.TotalCents, reason)
			if err != nil {
				return fmt.Errorf("record payment: %w", err)
			}
			if tag.RowsAffected() == 0 {
				// Another order.placed for the same order (a republish with a
				// new id): the outcome was announced already.
				log.Info("order already paid for", d.Fields()...)
				return nil
			}
			now := time.Now()
			if declined {
				_, err = outbox.Enqueue(ctx, tx, events.OrderPaymentFailed, e.OrderID, now, events.PaymentFailed{Reason: reason})
			} else {
				_, err = outbox.Enqueue(ctx, tx, events.OrderPaid, e.OrderID, now, events.Paid{ChargeID: charge.ID, AmountCents: charge.AmountCents})
			}
			return err
		})
	}
}
