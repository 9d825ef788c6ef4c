package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
)

// Currency is what every order is charged in.
const Currency = "INR"

// Charger is the part of the payment provider the consumer uses.
type Charger interface {
	Charge(ctx context.Context, req gateway.ChargeRequest, idempotencyKey string) (gateway.Charge, error)
}

// handleOrderPlaced charges a placed order and announces the outcome.
//
// The charge is idempotent per order: the provider's idempotency key is the
// order id, so when order.placed comes again (a redelivery after a crash
// between the charge and the commit, a retry after the database failed) the
// provider returns the first charge instead of charging twice.
//
// The payment row, the inbox row and the outbox row carrying order.paid or
// order.payment_failed are written in one transaction: the event is
// published (by the outbox relay, with confirms) exactly when the payment is
// recorded, never lost and never announced twice. The payments primary key
// (order id) also stops a second order.placed for the same order with
// another message id from announcing a second outcome.
func handleOrderPlaced(log *zap.Logger, db *pgxpool.Pool, gw Charger) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		if e.Type != events.OrderPlaced {
			return broker.Permanent(fmt.Errorf("payment does not handle %s", e.Type))
		}
		if _, err := uuid.Parse(e.OrderID); err != nil {
			return fmt.Errorf("%w: order_id %q is not a UUID", events.ErrMalformed, e.OrderID)
		}
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return err
		}
		if p.TotalCents < 0 {
			return fmt.Errorf("%w: negative total_cents %d", events.ErrMalformed, p.TotalCents)
		}
		// Skip the provider for a message already handled; the inbox
		// check inside the transaction below remains the one that counts.
		done, err := postgres.Processed(ctx, db, broker.QueuePayment, e.ID)
		if err != nil {
			return err
		}
		if done {
			log.Info("duplicate order.placed skipped", d.Fields()...)
			return nil
		}

		charge, err := gw.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: p.TotalCents, Currency: Currency}, e.OrderID)
		declined := errors.Is(err, gateway.ErrDeclined)
		switch {
		case declined:
			log.Info("charge declined", append(d.Fields(), zap.String("charge_id", charge.ID))...)
		case errors.Is(err, gateway.ErrRejected):
			// The provider refuses the request itself (the key reused
			// for another amount, say): no retry changes that.
			return broker.Permanent(err)
		case err != nil:
			return err // transient: the retry ladder asks again with the same key
		}

		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueuePayment, e.ID)
			if err != nil {
				return err
			}
			if !first {
				log.Info("duplicate order.placed skipped", d.Fields()...)
				return nil
			}
			status, reason := gateway.StatusSucceeded, ""
			if declined {
				status, reason = gateway.StatusDeclined, "card declined by the payment provider"
			}
			tag, err := tx.Exec(ctx, `INSERT INTO payments (order_id, status, charge_id, amount_cents, reason)
				VALUES ($1, $2, nullif($3, ''), $4, nullif($5, '')) ON CONFLICT (order_id) DO NOTHING`,
				e.OrderID, status, charge.ID, p.TotalCents, reason)
			if err != nil {
				return fmt.Errorf("record payment: %w", err)
			}
			if tag.RowsAffected() == 0 {
				log.Info("order already has a payment; not announcing another", d.Fields()...)
				return nil
			}
			now := time.Now()
			if declined {
				_, err = outbox.Enqueue(ctx, tx, events.OrderPaymentFailed, e.OrderID, now,
					events.PaymentFailed{Reason: reason, RestaurantID: p.RestaurantID, Email: p.Email})
			} else {
				_, err = outbox.Enqueue(ctx, tx, events.OrderPaid, e.OrderID, now,
					events.Paid{ChargeID: charge.ID, AmountCents: charge.AmountCents, RestaurantID: p.RestaurantID, Email: p.Email})
			}
			return err
		})
	}
}
