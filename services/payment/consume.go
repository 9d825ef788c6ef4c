package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// Provider is the part of the payment provider the consumer uses.
type Provider interface {
	Charge(ctx context.Context, req gateway.ChargeRequest, idempotencyKey string) (gateway.Charge, error)
	Refund(ctx context.Context, req gateway.RefundRequest, idempotencyKey string) (gateway.Refund, error)
	Void(ctx context.Context, chargeKey string) (gateway.Void, error)
}

// Payment statuses, as the payments table records them.
const (
	paymentSucceeded = gateway.StatusSucceeded
	paymentDeclined  = gateway.StatusDeclined
	// paymentFailed: refused for good before or by the provider (an
	// invalid amount, a request the provider rejects).
	paymentFailed = "failed"
	// paymentCancelled: the order was cancelled before any charge, and the
	// provider will never make one (its key is voided).
	paymentCancelled = "cancelled"
)

// newConsumer charges placed orders and refunds cancelled ones, and
// announces the outcomes; wake (which may be nil) is called after each
// batch that wrote outbox rows, so that this process's outbox relay
// publishes them at once.
//
// A batch's calls to the provider are made concurrently, then recorded
// together. Each is idempotent per order: a charge's idempotency key is the
// order id and a refund's "refund-" and the order id, so when an event
// comes again (a redelivery after a crash between the call and the commit,
// a retry after the database failed) the provider returns the first charge
// or refund instead of making another.
//
// order.placed and order.cancelled of one order may reach payment in either
// order, or in one batch, or in two batches at once; each handler takes the
// order's payment lock (a transaction-scoped advisory lock, so a crash
// leaves none behind) before it reads what payment knows of the order, and
// holds it until its commit, so the two never interleave. Then:
//
//   - order.placed charges the order, unless it has a payment already, or
//     the order is cancelled already (the orders table says so, whatever
//     payment has seen of it): a cancellation before the charge means no
//     charge. An invalid amount, a declined card or a charge the provider
//     refuses are order.payment_failed; only a provider answer that says
//     succeeded, for the order's total, is order.paid.
//   - order.cancelled refunds a succeeded charge (order.refunded follows),
//     and for an order with no payment yet voids its charge key at the
//     provider: no charge is ever made with it, or, if an attempt whose
//     answer was lost in a crash made one, that charge comes back and is
//     refunded.
//
// The payment, refund, inbox and outbox rows of a batch are written in one
// transaction: an outcome is published (by the outbox relay, with
// confirms) exactly when it is recorded, never lost and never announced
// twice.
func newConsumer(log *zap.Logger, db *pgxpool.Pool, gw Provider, wake func()) *consumer.Consumer {
	announced := func(ctx context.Context, w *writes) {
		if wake != nil && w.outbox.Len() > 0 {
			consumer.AfterCommit(ctx, wake)
		}
	}
	return consumer.New(broker.QueuePayment, db, log,
		consumer.On(events.OrderPlaced, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.Placed]) error {
			w, err := chargeBatch(ctx, tx, log, gw, batch)
			if err != nil {
				return err
			}
			announced(ctx, w)
			return nil
		}),
		consumer.On(events.OrderCancelled, func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[events.StatusChanged]) error {
			w, err := cancelBatch(ctx, tx, log, gw, batch)
			if err != nil {
				return err
			}
			announced(ctx, w)
			return nil
		}),
	)
}

// paymentState is what payment knows of an order, read under its lock.
type paymentState struct {
	status      string // of its payment; "" while it has none
	chargeID    string
	amountCents int64
	refunded    bool
	cancelled   bool // the order itself is cancelled
}

// lockOrders takes the payment lock of each of ids for the rest of tx, in
// a fixed order (two batches never wait on each other in a circle), and
// then reads what payment knows of them: one round trip, two statements,
// the second seeing what any earlier holder of a lock committed.
func lockOrders(ctx context.Context, tx pgx.Tx, ids []string) (map[string]paymentState, error) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var b pgx.Batch
	b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended('payment:' || id::text, 0)) FROM unnest($1::uuid[]) AS t (id)`, ids)
	b.Queue(`SELECT t.id::text, coalesce(p.status, ''), coalesce(p.charge_id, ''), coalesce(p.amount_cents, 0),
			r.order_id IS NOT NULL, coalesce(o.status = 'cancelled', false)
		FROM unnest($1::uuid[]) AS t (id)
		LEFT JOIN payments p ON p.order_id = t.id
		LEFT JOIN refunds r ON r.order_id = t.id
		LEFT JOIN orders o ON o.id = t.id`, ids)
	res := tx.SendBatch(ctx, &b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return nil, fmt.Errorf("take payment locks: %w", err)
	}
	rows, _ := res.Query()
	state := make(map[string]paymentState, len(ids))
	var id string
	var s paymentState
	if _, err := pgx.ForEachRow(rows, []any{&id, &s.status, &s.chargeID, &s.amountCents, &s.refunded, &s.cancelled}, func() error {
		state[id] = s
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read payments: %w", err)
	}
	return state, res.Close()
}

// orderIDs returns the orders of a batch's events.
func orderIDs[T any](batch []consumer.Event[T]) []string {
	ids := make([]string, len(batch))
	for i, e := range batch {
		ids[i] = e.OrderID
	}
	return ids
}

// each calls fn for every element of batch at once and returns, in order,
// what the calls returned that is not nil: a batch's provider calls go out
// together.
func each[T, R any](batch []T, fn func(T) *R) []R {
	results := make([]*R, len(batch))
	var wg sync.WaitGroup
	for i, e := range batch {
		wg.Go(func() { results[i] = fn(e) })
	}
	wg.Wait()
	var out []R
	for _, r := range results {
		if r != nil {
			out = append(out, *r)
		}
	}
	return out
}

// declineReason is what order.payment_failed says of a declined card.
const declineReason = "card declined by the payment provider"

// chargeBatch charges the batch's orders that need it and writes the
// outcomes.
func chargeBatch(ctx context.Context, tx pgx.Tx, log *zap.Logger, gw Provider, batch []consumer.Event[events.Placed]) (*writes, error) {
	state, err := lockOrders(ctx, tx, orderIDs(batch))
	if err != nil {
		return nil, err
	}
	var w writes
	var todo []consumer.Event[events.Placed]
	seen := make(map[string]bool, len(batch))
	for _, e := range batch {
		switch st := state[e.OrderID]; {
		case seen[e.OrderID] || st.status != "":
			log.Info("order has a payment already; not charging again", e.Fields()...)
		case st.cancelled:
			log.Info("order cancelled before its charge: not charged", e.Fields()...)
		case e.Data.TotalCents <= 0:
			// The API refuses such an order; one that comes anyway fails
			// its payment rather than waiting in a DLQ.
			reason := fmt.Sprintf("invalid amount: %d", e.Data.TotalCents)
			log.Warn("order.placed with an invalid amount: payment failed", append(e.Fields(), zap.String("reason", reason))...)
			if err := w.fail(ctx, e, paymentFailed, "", reason); err != nil {
				return nil, err
			}
		default:
			todo = append(todo, e)
		}
		seen[e.OrderID] = true
	}
	for _, c := range each(todo, func(e consumer.Event[events.Placed]) *charged { return charge(ctx, log, gw, e) }) {
		switch c.status {
		case paymentSucceeded:
			err = w.paid(ctx, c.e, c.charge)
		case paymentDeclined:
			err = w.fail(ctx, c.e, paymentDeclined, c.charge.ID, declineReason)
		default:
			err = w.fail(ctx, c.e, paymentFailed, "", c.reason)
		}
		if err != nil {
			return nil, err
		}
	}
	return &w, w.send(ctx, tx)
}

// charged is what the provider said of one order's charge.
type charged struct {
	e      consumer.Event[events.Placed]
	charge gateway.Charge
	status string // paymentSucceeded, paymentDeclined or paymentFailed
	reason string // why it failed
}

// charge asks the provider for e's charge. An event the provider cannot
// charge now fails alone (e.Fail, and nil): retried for a transient error,
// dead-lettered when the answer is not about the charge asked (money may
// have moved: a human's business).
func charge(ctx context.Context, log *zap.Logger, gw Provider, e consumer.Event[events.Placed]) *charged {
	c, err := gw.Charge(ctx, gateway.ChargeRequest{OrderID: e.OrderID, AmountCents: e.Data.TotalCents, Currency: Currency}, e.OrderID)
	switch {
	case err == nil:
		return &charged{e: e, charge: c, status: paymentSucceeded}
	case errors.Is(err, gateway.ErrDeclined):
		log.Info("charge declined", append(e.Fields(), zap.String("charge_id", c.ID))...)
		return &charged{e: e, charge: c, status: paymentDeclined}
	case errors.Is(err, gateway.ErrVoided):
		log.Info("charge key voided (the order was cancelled): not charged", e.Fields()...)
	case errors.Is(err, gateway.ErrRejected):
		log.Warn("charge refused by the provider: payment failed", append(e.Fields(), zap.Error(err))...)
		return &charged{e: e, status: paymentFailed, reason: "the payment provider refused the charge"}
	case errors.Is(err, gateway.ErrMismatch):
		log.Error("the provider's charge is not the one asked for: dead-lettered for an operator", append(e.Fields(), zap.Error(err))...)
		e.Fail(broker.Permanent(err))
	default:
		e.Fail(err) // transient: the retry ladder asks again with the same key
	}
	return nil
}

// refundKey is the idempotency key of an order's refund.
func refundKey(orderID string) string { return "refund-" + orderID }

// cancelBatch refunds or voids the charges of the batch's cancelled orders
// and writes what happened.
func cancelBatch(ctx context.Context, tx pgx.Tx, log *zap.Logger, gw Provider, batch []consumer.Event[events.StatusChanged]) (*writes, error) {
	state, err := lockOrders(ctx, tx, orderIDs(batch))
	if err != nil {
		return nil, err
	}
	var todo []consumer.Event[events.StatusChanged]
	seen := make(map[string]bool, len(batch))
	for _, e := range batch {
		switch st := state[e.OrderID]; {
		case seen[e.OrderID]:
		case st.status == paymentSucceeded && st.refunded:
			log.Info("order refunded already", e.Fields()...)
		case st.status == "" || st.status == paymentSucceeded:
			todo = append(todo, e)
		default:
			log.Info("cancelled order was never charged: nothing to refund", append(e.Fields(), zap.String("payment", st.status))...)
		}
		seen[e.OrderID] = true
	}
	var w writes
	for _, u := range each(todo, func(e consumer.Event[events.StatusChanged]) *undone { return undo(ctx, log, gw, e, state[e.OrderID]) }) {
		if err := w.undone(ctx, u); err != nil {
			return nil, err
		}
	}
	return &w, w.send(ctx, tx)
}

// undone is what cancelling an order did at the provider.
type undone struct {
	e consumer.Event[events.StatusChanged]
	// found is a charge payment had not recorded (made by an attempt
	// whose answer a crash lost), to record now.
	found  *gateway.Charge
	voided bool
	refund *gateway.Refund
}

// undo makes sure a cancelled order keeps no money: it refunds the
// order's succeeded charge, or voids the charge key of an order with no
// payment (refunding the charge that turns up, if one does). As charge, it
// fails e alone (and returns nil) when the provider cannot answer now.
func undo(ctx context.Context, log *zap.Logger, gw Provider, e consumer.Event[events.StatusChanged], st paymentState) *undone {
	u := &undone{e: e}
	charge := gateway.Charge{ID: st.chargeID, OrderID: e.OrderID, AmountCents: st.amountCents, Currency: Currency, Status: st.status}
	if st.status == "" {
		v, err := gw.Void(ctx, e.OrderID)
		if err != nil {
			fail(log, e, err)
			return nil
		}
		if v.Voided {
			u.voided = true
			return u
		}
		charge, u.found = *v.Charge, v.Charge
		log.Warn("a charge made before the cancellation turned up at the provider", append(e.Fields(), zap.String("charge_id", charge.ID))...)
		if charge.Status != gateway.StatusSucceeded {
			return u // declined: no money moved
		}
	}
	r, err := gw.Refund(ctx, gateway.RefundRequest{ChargeID: charge.ID, OrderID: e.OrderID, AmountCents: charge.AmountCents, Currency: charge.Currency},
		refundKey(e.OrderID))
	if err != nil {
		fail(log, e, err)
		return nil
	}
	u.refund = &r
	return u
}

// fail fails e alone: for good when the provider refused or answered about
// something else (a human's business), for a retry otherwise.
func fail[T any](log *zap.Logger, e consumer.Event[T], err error) {
	if errors.Is(err, gateway.ErrRejected) || errors.Is(err, gateway.ErrMismatch) {
		log.Error("the provider refused to undo a cancelled order's charge: dead-lettered for an operator", append(e.Fields(), zap.Error(err))...)
		e.Fail(broker.Permanent(err))
		return
	}
	e.Fail(err)
}

// writes gathers a batch's payment, refund and outbox rows, sent with one
// statement per table in one round trip.
type writes struct {
	orders, statuses, charges, reasons []string
	amounts                            []int64
	refundOrders, refundIDs            []string
	refundAmounts                      []int64
	outbox                             outbox.Rows
}

// payment adds a payments row.
func (w *writes) payment(orderID, status, chargeID string, amountCents int64, reason string) {
	w.orders, w.statuses, w.charges = append(w.orders, orderID), append(w.statuses, status), append(w.charges, chargeID)
	w.amounts, w.reasons = append(w.amounts, amountCents), append(w.reasons, reason)
}

// paid records e's succeeded charge and announces order.paid.
func (w *writes) paid(ctx context.Context, e consumer.Event[events.Placed], c gateway.Charge) error {
	w.payment(e.OrderID, paymentSucceeded, c.ID, c.AmountCents, "")
	_, err := w.outbox.Add(e.Context(ctx), events.OrderPaid, e.OrderID, time.Now(),
		events.Paid{ChargeID: c.ID, AmountCents: c.AmountCents, RestaurantID: e.Data.RestaurantID, Email: e.Data.Email})
	return err
}

// fail records e's failed payment and announces order.payment_failed.
func (w *writes) fail(ctx context.Context, e consumer.Event[events.Placed], status, chargeID, reason string) error {
	w.payment(e.OrderID, status, chargeID, e.Data.TotalCents, reason)
	_, err := w.outbox.Add(e.Context(ctx), events.OrderPaymentFailed, e.OrderID, time.Now(),
		events.PaymentFailed{Reason: reason, RestaurantID: e.Data.RestaurantID, Email: e.Data.Email})
	return err
}

// undone records what cancelling u's order did, and announces a refund.
func (w *writes) undone(ctx context.Context, u undone) error {
	switch {
	case u.voided:
		w.payment(u.e.OrderID, paymentCancelled, "", 0, "cancelled before the charge")
	case u.found != nil:
		w.payment(u.e.OrderID, u.found.Status, u.found.ID, u.found.AmountCents, "charged before the cancellation")
	}
	if u.refund == nil {
		return nil
	}
	r := u.refund
	w.refundOrders, w.refundIDs, w.refundAmounts = append(w.refundOrders, u.e.OrderID), append(w.refundIDs, r.ID), append(w.refundAmounts, r.AmountCents)
	_, err := w.outbox.Add(u.e.Context(ctx), events.OrderRefunded, u.e.OrderID, time.Now(),
		events.Refunded{RefundID: r.ID, ChargeID: r.ChargeID, AmountCents: r.AmountCents, RestaurantID: u.e.Data.RestaurantID, Email: u.e.Data.Email})
	return err
}

// send writes what w gathered, in one round trip. No row can exist
// already: the order's lock is held and its state was read under it, so a
// conflict is a bug, and fails the batch rather than announcing twice.
func (w *writes) send(ctx context.Context, tx pgx.Tx) error {
	var b pgx.Batch
	if len(w.orders) > 0 {
		b.Queue(`INSERT INTO payments (order_id, status, charge_id, amount_cents, reason)
			SELECT order_id, status, nullif(charge_id, ''), amount_cents, nullif(reason, '')
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[]) AS p (order_id, status, charge_id, amount_cents, reason)`,
			w.orders, w.statuses, w.charges, w.amounts, w.reasons)
	}
	if len(w.refundOrders) > 0 {
		b.Queue(`INSERT INTO refunds (order_id, refund_id, amount_cents)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])`, w.refundOrders, w.refundIDs, w.refundAmounts)
	}
	w.outbox.Queue(&b)
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("record payments: %w", err)
	}
	return nil
}
