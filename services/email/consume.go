package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// Sender sends one e-mail.
type Sender interface {
	Send(ctx context.Context, m Mail) error
}

// handleOrderEmail sends the customer the e-mail an order event calls for,
// no faster than the provider's rate limit: a burst waits in the queue
// (prefetch keeps it there), it never fails.
//
// Sending and recording cannot be one transaction: if the process dies
// between the provider's OK and the commit, the event is redelivered and the
// mail sent again. The mail carries X-Dabba-Message-Id (the event id) so the
// receiving side can drop that rare duplicate; everything else is exactly
// once, through the inbox.
func handleOrderEmail(db *pgxpool.Pool, limiter *rate.Limiter, sender Sender) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		var done bool
		if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM processed_messages WHERE consumer = $1 AND message_id = $2)",
			broker.QueueEmail, d.MessageID).Scan(&done); err != nil {
			return fmt.Errorf("check inbox: %w", err)
		}
		if done {
			return nil
		}
		m, err := render(ctx, db, e)
		if err != nil {
			return err
		}
		if err := limiter.Wait(ctx); err != nil {
			return fmt.Errorf("wait for the send rate: %w", err)
		}
		if err := sender.Send(ctx, m); err != nil {
			if errors.Is(err, ErrRejected) {
				return broker.Permanent(err)
			}
			return err
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			if _, err := postgres.MarkProcessed(ctx, tx, broker.QueueEmail, d.MessageID); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO emails_sent (message_id, order_id, recipient, kind) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
				d.MessageID, e.OrderID, m.To, e.Type)
			if err != nil {
				return fmt.Errorf("record e-mail: %w", err)
			}
			return nil
		})
	}
}

// render writes the e-mail for an event. Events from the payment service
// do not carry the address, so it is read from the order.
func render(ctx context.Context, db *pgxpool.Pool, e events.Envelope) (Mail, error) {
	m := Mail{MessageID: e.ID}
	short := e.OrderID
	if len(short) > 8 {
		short = short[:8]
	}
	switch e.Type {
	case events.OrderPlaced:
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return m, err
		}
		m.To = p.Email
		m.Subject = "We have your order " + short
		m.Body = fmt.Sprintf("Thank you! Order %s (%d items, %s) is placed. We will tell you when it is paid.",
			e.OrderID, len(p.Items), money(p.TotalCents))
	case events.OrderPaid:
		var p events.Paid
		if err := events.DecodeData(e, &p); err != nil {
			return m, err
		}
		m.Subject = "Payment received for order " + short
		m.Body = fmt.Sprintf("We received %s for order %s. The restaurant is on it.", money(p.AmountCents), e.OrderID)
	case events.OrderPaymentFailed:
		var p events.PaymentFailed
		if err := events.DecodeData(e, &p); err != nil {
			return m, err
		}
		m.Subject = "Payment failed for order " + short
		m.Body = fmt.Sprintf("We could not charge order %s: %s.", e.OrderID, p.Reason)
	case events.OrderDelivered:
		var p events.StatusChanged
		if err := events.DecodeData(e, &p); err != nil {
			return m, err
		}
		m.To = p.Email
		m.Subject = "Order " + short + " delivered"
		m.Body = fmt.Sprintf("Order %s has been delivered. Enjoy your meal!", e.OrderID)
	default:
		return m, broker.Permanent(fmt.Errorf("email does not handle %s", e.Type))
	}
	if m.To == "" {
		err := db.QueryRow(ctx, "SELECT email FROM orders WHERE id = $1", e.OrderID).Scan(&m.To)
		if errors.Is(err, pgx.ErrNoRows) {
			return m, broker.Permanent(fmt.Errorf("order %s does not exist", e.OrderID))
		}
		if err != nil {
			return m, fmt.Errorf("read the order's e-mail: %w", err)
		}
	}
	return m, nil
}

func money(cents int64) string { return fmt.Sprintf("₹%d.%02d", cents/100, cents%100) }
