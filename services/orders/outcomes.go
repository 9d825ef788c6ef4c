package main

import (
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
)

// paymentOutcomes applies the payment service's outcomes, order.paid and
// order.payment_failed, to the orders: a projection of the outbox, which
// both services write in this one database, rather than a queue of its
// own. An outcome needs no delivery, no inbox row and no transaction of its
// own: a batch of them is one statement, committed with the projection's
// position, so each applies exactly once.
func paymentOutcomes() outbox.Projection {
	return outbox.Projection{
		Name:  "order-status",
		Keys:  []string{events.OrderPaid, events.OrderPaymentFailed},
		Apply: applyOutcomes,
		// An order's "paid" waits for this: poll often, it costs one
		// index look-up when there is nothing new.
		Poll: 20 * time.Millisecond,
	}
}

// outcomeStatus is the status each outcome moves an order to.
var outcomeStatus = map[string]string{events.OrderPaid: events.StatusPaid, events.OrderPaymentFailed: events.StatusPaymentFailed}

// applyOutcomes moves each order of the batch to its outcome's status, where
// the order's life allows it (a cancelled order stays cancelled; a second
// outcome for one order changes nothing), and records the move in its
// history, with one statement. The first outcome of an order in commit
// order wins.
func applyOutcomes(b *pgx.Batch, batch []outbox.Entry) error {
	ids, statuses, ats := make([]string, len(batch)), make([]string, len(batch)), make([]time.Time, len(batch))
	for i, e := range batch {
		ids[i], statuses[i], ats[i] = e.Event.OrderID, outcomeStatus[e.Event.Type], e.Event.OccurredAt
	}
	var froms, tos []string
	for from, to := range moves {
		for _, t := range to {
			froms, tos = append(froms, from), append(tos, t)
		}
	}
	b.Queue(`WITH b AS (
			SELECT DISTINCT ON (id) id, status, at
			FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS b (id, status, at, n) ORDER BY id, n
		), moved AS (
			UPDATE orders o SET status = b.status, updated_at = b.at FROM b
			WHERE o.id = b.id AND (o.status, b.status) IN (SELECT * FROM unnest($4::text[], $5::text[]))
			RETURNING o.id, b.status, b.at
		)
		INSERT INTO order_status_history (order_id, status, at) SELECT id, status, at FROM moved ON CONFLICT DO NOTHING`,
		ids, statuses, ats, froms, tos)
	return nil
}
