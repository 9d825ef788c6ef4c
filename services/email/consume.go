package main

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// sendTimeout bounds one SMTP conversation, so a hung server cannot keep the
// inbox row locked for the whole handler timeout.
const sendTimeout = 30 * time.Second

// Sender sends one e-mail.
type Sender interface {
	Send(ctx context.Context, m Mail) error
}

// errRecipientUnknown means an event without an address arrived before the
// order's order.placed e-mail was recorded (it waits for a retry, say). A
// transient error: by the next attempt it normally has been.
var errRecipientUnknown = errors.New("recipient of the order not known yet (order.placed not processed)")

// handleOrderEmail sends the customer the e-mail an order event calls for,
// no faster than the provider's rate limit: handlers wait for the limiter,
// and the small prefetch leaves a burst's backlog in the queue. A burst is
// delayed, never failed or dropped.
//
// Exactly once, as far as SMTP allows: the inbox is checked first, then,
// within one transaction, the inbox row is inserted (its row lock makes a
// concurrent copy of the same event wait and then skip), the mail is sent,
// and emails_sent is written; the commit follows the send. A crash, or a
// lost database connection, between the server's OK and the commit rolls
// the inbox back, so the redelivered event sends the mail a second time.
// SMTP has no way to make a send and a commit atomic; the mail carries
// X-Dabba-Message-Id (the event id) so that the receiving side can drop that
// rare duplicate.
func handleOrderEmail(log *zap.Logger, db *pgxpool.Pool, limiter *rate.Limiter, sender Sender, r *Renderer) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		e, err := events.Decode(d.Body)
		if err != nil {
			return err
		}
		if _, err := uuid.Parse(e.OrderID); err != nil {
			return fmt.Errorf("%w: order_id %q is not a UUID", events.ErrMalformed, e.OrderID)
		}
		m, err := compose(r, e)
		if err != nil {
			return err
		}
		done, err := postgres.Processed(ctx, db, broker.QueueEmail, e.ID)
		if err != nil {
			return err
		}
		if done {
			log.Info("duplicate event skipped", d.Fields()...)
			return nil
		}
		if m.To == "" {
			if m.To, err = recipientOf(ctx, db, e.OrderID); err != nil {
				return err
			}
		}
		// Wait for a send slot before taking a database connection. The
		// consumer's handler timeout is longer than the longest wait, so
		// this only fails when the service is stopped for good.
		if err := limiter.Wait(ctx); err != nil {
			return fmt.Errorf("wait for a send slot: %w", err)
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			first, err := postgres.MarkProcessed(ctx, tx, broker.QueueEmail, e.ID)
			if err != nil {
				return err
			}
			if !first {
				log.Info("duplicate event skipped", d.Fields()...)
				return nil
			}
			sctx, cancel := context.WithTimeout(ctx, sendTimeout)
			defer cancel()
			if err := sender.Send(sctx, m); err != nil {
				if errors.Is(err, ErrRejected) {
					return broker.Permanent(err) // 5xx: the server will never take it
				}
				return err // 4xx or network: retry
			}
			if _, err := tx.Exec(ctx, `INSERT INTO emails_sent (message_id, order_id, recipient, kind)
				VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING`, e.ID, e.OrderID, m.To, e.Type); err != nil {
				return fmt.Errorf("record e-mail: %w", err)
			}
			return nil
		})
	}
}

// compose renders the e-mail for e. To stays empty when the event does not
// name the customer's address.
func compose(r *Renderer, e events.Envelope) (Mail, error) {
	data := mailData{OrderID: e.OrderID, Short: e.OrderID[:8]}
	var to string
	var err error
	switch e.Type {
	case events.OrderPlaced:
		err = events.DecodeData(e, &data.Placed)
		to = data.Placed.Email
	case events.OrderPaid:
		err = events.DecodeData(e, &data.Paid)
		to = data.Paid.Email
	case events.OrderPaymentFailed:
		err = events.DecodeData(e, &data.Failed)
		to = data.Failed.Email
	case events.OrderDelivered:
		err = events.DecodeData(e, &data.Status)
		to = data.Status.Email
	default:
		return Mail{}, broker.Permanent(fmt.Errorf("email does not handle %s", e.Type))
	}
	if err != nil {
		return Mail{}, err
	}
	if to != "" {
		// A bare address only: it goes into the To header as it is, so
		// anything else (a name, a line break) is refused here.
		a, err := mail.ParseAddress(to)
		if err != nil || a.Address != to {
			return Mail{}, fmt.Errorf("%w: email %q is not an address", events.ErrMalformed, to)
		}
	}
	subject, body, err := r.Render(e.Type, data)
	if err != nil {
		return Mail{}, broker.Permanent(err)
	}
	return Mail{To: to, Subject: subject, Body: body, MessageID: e.ID}, nil
}

// recipientOf finds the address of an order from the e-mails sent about it.
func recipientOf(ctx context.Context, db *pgxpool.Pool, orderID string) (string, error) {
	var to string
	err := db.QueryRow(ctx, "SELECT recipient FROM emails_sent WHERE order_id = $1 ORDER BY sent_at LIMIT 1", orderID).Scan(&to)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", errRecipientUnknown
	}
	if err != nil {
		return "", fmt.Errorf("look up recipient: %w", err)
	}
	return to, nil
}
