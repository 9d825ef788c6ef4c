package main

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// sendTimeout bounds the SMTP conversation of a batch, so a hung server
// cannot keep the inbox entries claimed for the whole handler timeout.
const sendTimeout = 30 * time.Second

// Sender sends e-mails: SendAll returns each one's outcome (nil: sent; an
// error wrapping ErrRejected: never will be; any other: not now).
type Sender interface {
	SendAll(ctx context.Context, ms []Mail) []error
}

// errRecipientUnknown means an event without an address arrived before the
// order's order.placed e-mail was recorded (it waits for a retry, say). A
// transient error: by the next attempt it normally has been.
var errRecipientUnknown = errors.New("recipient of the order not known yet (order.placed not processed)")

// newConsumer sends the customer the e-mail each order event calls for, no
// faster than the provider's rate limit (limiter). A burst is delayed,
// never failed or dropped: the mails wait for the limiter, and the rest of
// the backlog waits in the queue, where a crash cannot lose it and an
// operator can see it. Since a batch is one transaction, a batch holds no
// more mails than the limit lets through in about a second.
//
// Exactly once, as far as SMTP allows: the batch's inbox entries are
// claimed first (a concurrent copy of the same event waits, then skips),
// each new event's mail is sent, emails_sent and the inbox rows are
// written, and the commit follows the sends. A mail that fails fails alone:
// it gets no inbox row and is retried (a 4xx, a network error) or
// dead-lettered (a 5xx) while the others commit, so no mail is sent twice
// because a neighbour failed. A crash, or a lost database connection,
// between the server's OK and the commit leaves no inbox row, so the
// redelivered event sends the mail a second time: SMTP has no way to make a
// send and a commit atomic. The mail carries X-Dabba-Message-Id (the event id) so that the
// receiving side can drop that rare duplicate.
func newConsumer(log *zap.Logger, db *pgxpool.Pool, limiter *rate.Limiter, sender Sender, r *Renderer) *consumer.Consumer {
	batch := int(max(1, min(float64(limiter.Limit()), 1<<20))) // rate.Inf is a float's largest
	c := consumer.New(broker.QueueEmail, db, log,
		consumer.On(events.OrderPlaced, mailer(limiter, sender, r, func(p events.Placed) string { return p.Email })),
		consumer.On(events.OrderPaid, mailer(limiter, sender, r, func(p events.Paid) string { return p.Email })),
		consumer.On(events.OrderPaymentFailed, mailer(limiter, sender, r, func(p events.PaymentFailed) string { return p.Email })),
		consumer.On(events.OrderDelivered, mailer(limiter, sender, r, func(p events.StatusChanged) string { return p.Email })),
		consumer.On(events.OrderCancelled, mailer(limiter, sender, r, func(p events.StatusChanged) string { return p.Email })),
		consumer.On(events.OrderRefunded, mailer(limiter, sender, r, func(p events.Refunded) string { return p.Email })),
		consumer.On(events.OrderRiderNear, mailer(limiter, sender, r, func(p events.RiderNear) string { return p.Email })),
	)
	// A handler waits for a send slot per mail: give a batch the time its
	// slots take, plus a send's.
	wait := time.Duration(float64(batch) / float64(limiter.Limit()) * float64(time.Second))
	return c.LimitBatch(batch).Timeout(wait + 2*sendTimeout)
}

// mailer returns the route that mails events whose payload is T, addressed
// to what to reads from it (or, when it names nobody, to whoever the
// order's earlier mails went to). The batch's mails go to the provider
// together, each once the rate limit lets it.
func mailer[T any](limiter *rate.Limiter, sender Sender, r *Renderer, to func(T) string) func(context.Context, pgx.Tx, []consumer.Event[T]) error {
	return func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[T]) error {
		var mails []Mail
		var mailed []consumer.Event[T]
		for _, e := range batch {
			data := mailData{OrderID: e.OrderID, Short: events.ShortID(e.OrderID)}
			set(&data, e.Data)
			m, err := compose(r, e.Type, data, e.ID, to(e.Data))
			if err != nil {
				e.Fail(err)
				continue
			}
			if m.To == "" {
				if m.To, err = recipientOf(ctx, tx, e.OrderID); err != nil {
					if !errors.Is(err, errRecipientUnknown) {
						return err
					}
					e.Fail(err)
					continue
				}
			}
			if err := limiter.Wait(ctx); err != nil {
				return fmt.Errorf("wait for a send slot: %w", err)
			}
			mails, mailed = append(mails, m), append(mailed, e)
		}
		if len(mails) == 0 {
			return nil
		}
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		errs := sender.SendAll(sctx, mails)
		cancel()
		var sent []sentMail
		for i, e := range mailed {
			switch err := errs[i]; {
			case errors.Is(err, ErrRejected):
				e.Fail(broker.Permanent(err)) // 5xx: the server will never take it
			case err != nil:
				// A 4xx or no answer: the mail server is down or
				// refusing for now, not this mail's fault.
				e.Fail(broker.Unavailable("smtp", err))
			default:
				sent = append(sent, sentMail{e.ID, e.OrderID, mails[i].To, e.Type})
			}
		}
		return recordSent(ctx, tx, sent)
	}
}

// sentMail is one row of emails_sent.
type sentMail struct{ MessageID, OrderID, Recipient, Kind string }

// recordSent writes the rows of the mails a batch sent, with one statement.
func recordSent(ctx context.Context, tx pgx.Tx, sent []sentMail) error {
	if len(sent) == 0 {
		return nil
	}
	n := len(sent)
	ids, orders, to, kinds := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, m := range sent {
		ids[i], orders[i], to[i], kinds[i] = m.MessageID, m.OrderID, m.Recipient, m.Kind
	}
	if _, err := tx.Exec(ctx, `INSERT INTO emails_sent (message_id, order_id, recipient, kind)
		SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[]) ON CONFLICT (message_id) DO NOTHING`,
		ids, orders, to, kinds); err != nil {
		return fmt.Errorf("record e-mails: %w", err)
	}
	return nil
}

// set puts an event's payload where its template expects it.
func set(data *mailData, payload any) {
	switch p := payload.(type) {
	case events.Placed:
		data.Placed = p
	case events.Paid:
		data.Paid = p
	case events.PaymentFailed:
		data.Failed = p
	case events.RiderNear:
		data.Near = p
	case events.StatusChanged:
		data.Status = p
	case events.Refunded:
		data.Refunded = p
	}
}

// compose renders the e-mail of an event of type typ (id) to the address
// to, which may be empty when the event does not name the customer's.
func compose(r *Renderer, typ string, data mailData, id, to string) (Mail, error) {
	if to != "" {
		// A bare address only: it goes into the To header as it is, so
		// anything else (a name, a line break) is refused here.
		a, err := mail.ParseAddress(to)
		if err != nil || a.Address != to {
			return Mail{}, fmt.Errorf("%w: email %q is not an address", events.ErrMalformed, to)
		}
	}
	subject, body, err := r.Render(typ, data)
	if err != nil {
		return Mail{}, broker.Permanent(err)
	}
	return Mail{To: to, Subject: subject, Body: body, MessageID: id}, nil
}

// recipientOf finds the address of an order from the e-mails sent about it.
func recipientOf(ctx context.Context, db pgx.Tx, orderID string) (string, error) {
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
