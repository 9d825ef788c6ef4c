package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// newConsumer applies the payment service's outcomes, order.paid and
// order.payment_failed from the order-status queue, to the orders.
func newConsumer(log *zap.Logger, db *pgxpool.Pool) *consumer.Consumer {
	return consumer.New(broker.QueueOrderStatus, db, log,
		consumer.On(events.OrderPaid, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Paid]) error {
			return applyOutcome(ctx, tx, log, events.StatusPaid, batch)
		}),
		consumer.On(events.OrderPaymentFailed, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.PaymentFailed]) error {
			return applyOutcome(ctx, tx, log, events.StatusPaymentFailed, batch)
		}),
	)
}

// applyOutcome moves the batch's orders to status to, with one statement,
// where their life allows it, and records each move in their history. An
// outcome that no longer applies (the order was cancelled meanwhile, or the
// event came twice under two ids) changes nothing and is logged; one for an
// order that does not exist is dead-lettered.
func applyOutcome[T any](ctx context.Context, tx pgx.Tx, log *zap.Logger, to string, batch []consumer.Event[T]) error {
	ids, ats := make([]string, len(batch)), make([]time.Time, len(batch))
	for i, e := range batch {
		ids[i], ats[i] = e.OrderID, e.OccurredAt
	}
	rows, err := tx.Query(ctx, `
		WITH b AS (SELECT DISTINCT ON (id) id, at FROM unnest($1::uuid[], $2::timestamptz[]) AS b (id, at) ORDER BY id, at),
		moved AS (
			UPDATE orders o SET status = $3, updated_at = b.at FROM b
			WHERE o.id = b.id AND o.status = ANY($4) RETURNING o.id, b.at
		), history AS (
			INSERT INTO order_status_history (order_id, status, at) SELECT id, $3, at FROM moved ON CONFLICT DO NOTHING
		)
		SELECT b.id::text, moved.id IS NOT NULL, EXISTS (SELECT 1 FROM orders o WHERE o.id = b.id)
		FROM b LEFT JOIN moved USING (id)`, ids, ats, to, movesTo(to))
	if err != nil {
		return fmt.Errorf("apply %s: %w", to, err)
	}
	type outcome struct{ moved, exists bool }
	outcomes := map[string]outcome{}
	var id string
	var o outcome
	if _, err := pgx.ForEachRow(rows, []any{&id, &o.moved, &o.exists}, func() error { outcomes[id] = o; return nil }); err != nil {
		return fmt.Errorf("apply %s: %w", to, err)
	}
	for _, e := range batch {
		switch o := outcomes[e.OrderID]; {
		case !o.exists:
			e.Fail(broker.Permanent(fmt.Errorf("%w: %s", ErrNotFound, e.OrderID)))
		case !o.moved:
			log.Info("payment outcome skipped: it no longer applies", e.Fields()...)
		}
	}
	return nil
}

// movesTo returns the statuses an order may move to status from.
func movesTo(status string) []string {
	var from []string
	for f := range moves {
		if canMove(f, status) {
			from = append(from, f)
		}
	}
	return from
}
