package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/services/payment/gateway"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
)

// Currency is what every order is charged in.
const Currency = "INR"

// Charger is the part of the payment provider the consumer uses.
type Charger interface {
	Charge(ctx context.Context, req gateway.ChargeRequest, idempotencyKey string) (gateway.Charge, error)
}

// newConsumer charges placed orders and announces the outcomes; wake (which
// may be nil) is called after each batch that wrote outbox rows, so that
// this process's outbox relay publishes them at once.
//
// A batch's charges are asked of the provider concurrently, then recorded
// together. Each charge is idempotent per order: the provider's idempotency
// key is the order id, so when order.placed comes again (a redelivery after
// a crash between the charge and the commit, a retry after the database
// failed) the provider returns the first charge instead of charging twice.
//
// The payment rows, the inbox rows and the outbox rows carrying order.paid or
// order.payment_failed are written in one transaction: an outcome is
// published (by the outbox relay, with confirms) exactly when the payment is
// recorded, never lost and never announced twice. The payments primary key
// (order id) also stops a second order.placed for the same order with
// another message id from announcing a second outcome.
func newConsumer(log *zap.Logger, db *pgxpool.Pool, gw Charger, wake func()) *consumer.Consumer {
	return consumer.New(broker.QueuePayment, db, log,
		consumer.On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Placed]) error {
			outcomes := charge(ctx, log, gw, batch)
			if err := record(ctx, tx, log, outcomes); err != nil {
				return err
			}
			if wake != nil {
				consumer.AfterCommit(ctx, wake)
			}
			return nil
		}),
	)
}

// outcome is what the provider said of one order.placed.
type outcome struct {
	e        consumer.Event[events.Placed]
	charge   gateway.Charge
	declined bool
}

// charge asks the provider for the batch's charges, all at once. An event
// the provider cannot charge is failed alone: retried for a transient
// error, dead-lettered for a refusal no retry changes (the key reused for
// another amount, say) or a malformed amount.
func charge(ctx context.Context, log *zap.Logger, gw Charger, batch []consumer.Event[events.Placed]) []outcome {
	results := make([]*outcome, len(batch))
	var wg sync.WaitGroup
	for i, e := range batch {
		if e.Data.TotalCents < 0 {
			e.Fail(fmt.Errorf("%w: negative total_cents %d", events.ErrMalformed, e.Data.TotalCents))
			continue
		}
		wg.Go(func() {
			c, err := gw.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: e.Data.TotalCents, Currency: Currency}, e.OrderID)
			switch {
			case errors.Is(err, gateway.ErrDeclined):
				log.Info("charge declined", append(e.Fields(), zap.String("charge_id", c.ID))...)
				results[i] = &outcome{e: e, charge: c, declined: true}
			case errors.Is(err, gateway.ErrRejected):
				e.Fail(broker.Permanent(err))
			case err != nil:
				e.Fail(err) // transient: the retry ladder asks again with the same key
			default:
				results[i] = &outcome{e: e, charge: c}
			}
		})
	}
	wg.Wait()
	var out []outcome
	for _, r := range results {
		if r != nil {
			out = append(out, *r)
		}
	}
	return out
}

// declineReason is what order.payment_failed says of a declined card.
const declineReason = "card declined by the payment provider"

// record writes the payments with one statement and, for each order that
// had none yet, its outcome's outbox row, in one round trip.
func record(ctx context.Context, tx pgx.Tx, log *zap.Logger, outcomes []outcome) error {
	if len(outcomes) == 0 {
		return nil
	}
	n := len(outcomes)
	orders, statuses, charges, amounts, reasons := make([]string, n), make([]string, n), make([]string, n), make([]int64, n), make([]string, n)
	for i, o := range outcomes {
		orders[i], statuses[i], charges[i], amounts[i] = o.e.OrderID, gateway.StatusSucceeded, o.charge.ID, o.e.Data.TotalCents
		if o.declined {
			statuses[i], reasons[i] = gateway.StatusDeclined, declineReason
		}
	}
	rows, err := tx.Query(ctx, `INSERT INTO payments (order_id, status, charge_id, amount_cents, reason)
		SELECT order_id, status, nullif(charge_id, ''), amount_cents, nullif(reason, '')
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[]) AS p (order_id, status, charge_id, amount_cents, reason)
		ON CONFLICT (order_id) DO NOTHING RETURNING order_id::text`, orders, statuses, charges, amounts, reasons)
	if err != nil {
		return fmt.Errorf("record payments: %w", err)
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("record payments: %w", err)
	}
	fresh := make(map[string]bool, len(inserted))
	for _, id := range inserted {
		fresh[id] = true
	}
	var announce outbox.Rows
	now := time.Now()
	for _, o := range outcomes {
		if !fresh[o.e.OrderID] {
			log.Info("order already has a payment; not announcing another", o.e.Fields()...)
			continue
		}
		fresh[o.e.OrderID] = false // the same order twice in one batch: one outcome
		p, ectx := o.e.Data, o.e.Context(ctx)
		if o.declined {
			_, err = announce.Add(ectx, events.OrderPaymentFailed, o.e.OrderID, now,
				events.PaymentFailed{Reason: declineReason, RestaurantID: p.RestaurantID, Email: p.Email})
		} else {
			_, err = announce.Add(ectx, events.OrderPaid, o.e.OrderID, now,
				events.Paid{ChargeID: o.charge.ID, AmountCents: o.charge.AmountCents, RestaurantID: p.RestaurantID, Email: p.Email})
		}
		if err != nil {
			return err
		}
	}
	if announce.Len() == 0 {
		return nil
	}
	var b pgx.Batch
	announce.Queue(&b)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("insert outbox events: %w", err)
	}
	return nil
}
