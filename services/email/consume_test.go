package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/services/email/smtpsink"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// MustSink starts an in-process SMTP server and stops it with the test.
func MustSink(tb testing.TB) *smtpsink.Sink {
	tb.Helper()
	sink, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sink.Close() })
	return sink
}

func mustSender(tb testing.TB, addr string) *SMTPSender {
	tb.Helper()
	s, err := NewSMTPSender(addr, "Dabba <orders@dabba.local>")
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func mustRenderer(tb testing.TB) *Renderer {
	tb.Helper()
	r, err := NewRenderer()
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func placedData(email string) events.Placed {
	return events.Placed{CustomerID: "c-1", RestaurantID: "r-1", Email: email, TotalCents: 1350,
		Items:           []events.Item{{SKU: "dosa", Name: "Masala dosa", Quantity: 3, UnitPriceCents: 450}},
		DeliveryAddress: events.Address{Line1: "12 Linking Road", Lat: 19.06, Lng: 72.83}}
}

// slowSender sends through Sender after a delay.
type slowSender struct {
	Sender
	delay time.Duration
}

func (s slowSender) SendAll(ctx context.Context, ms []Mail) []error {
	time.Sleep(s.delay)
	return s.Sender.SendAll(ctx, ms)
}

// handlerOf returns the e-mail consumer's handling of one delivery.
func handlerOf(tb testing.TB, db *pgxpool.Pool, limiter *rate.Limiter, sender Sender) func(context.Context, broker.Delivery) error {
	c := newConsumer(zaptest.NewLogger(tb), db, limiter, sender, mustRenderer(tb))
	return func(ctx context.Context, d broker.Delivery) error { return c.Handle(ctx, []broker.Delivery{d}) }
}

func TestConsumerBindings(t *testing.T) {
	if err := newConsumer(zaptest.NewLogger(t), nil, rate.NewLimiter(1, 1), nil, mustRenderer(t)).CheckBindings(); err != nil {
		t.Fatal(err)
	}
}

// mailsFor returns what the sink received for one event.
func mailsFor(sink *smtpsink.Sink, eventID string) []smtpsink.Message {
	var out []smtpsink.Message
	for _, m := range sink.Messages() {
		if m.DabbaID == eventID {
			out = append(out, m)
		}
	}
	return out
}

func TestHandleOrderEmail(t *testing.T) {
	db := testenv.MustDB(t)
	sink := MustSink(t)
	h := handlerOf(t, db, rate.NewLimiter(rate.Inf, 1), mustSender(t, sink.Addr()))
	ctx := context.Background()
	rows := func(t *testing.T, eventID string) int {
		t.Helper()
		var n int
		if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM emails_sent WHERE message_id = $1)
			+ (SELECT count(*) FROM processed_messages WHERE consumer = 'email' AND message_id = $1)`, eventID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("OKOnceWhenDeliveredTwice", func(t *testing.T) {
		orderID := uuid.NewString()
		d := testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, orderID, placedData("eater@example.com"))
		for i := 0; i < 2; i++ {
			if err := h(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		got := mailsFor(sink, d.MessageID)
		if len(got) != 1 {
			t.Fatalf("%d mails sent, want 1", len(got))
		}
		m := got[0]
		if len(m.To) != 1 || m.To[0] != "eater@example.com" || !strings.Contains(m.Subject, events.ShortID(orderID)) ||
			!strings.Contains(m.Body, "3 x Masala dosa  INR 13.50") || !strings.Contains(m.Body, "Total: INR 13.50") {
			t.Fatalf("mail = %+v", m)
		}
		if n := rows(t, d.MessageID); n != 2 {
			t.Fatalf("%d emails_sent + inbox rows, want 2", n)
		}
	})

	t.Run("OKOnceWhenDeliveredTwiceAtOnce", func(t *testing.T) {
		// Two copies in flight together (the outbox relay published the
		// event twice): the inbox row's lock lets one send.
		// A slow send keeps the first copy's transaction open while the
		// others get past the inbox check.
		slow := handlerOf(t, db, rate.NewLimiter(rate.Inf, 1), slowSender{mustSender(t, sink.Addr()), 200 * time.Millisecond})
		d := testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, uuid.NewString(), placedData("eater@example.com"))
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = slow(ctx, d) }()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if n := len(mailsFor(sink, d.MessageID)); n != 1 {
			t.Fatalf("%d mails sent, want 1", n)
		}
	})

	t.Run("OKEveryKind", func(t *testing.T) {
		orderID := uuid.NewString()
		tests := []struct {
			name     string
			give     broker.Delivery
			wantSubj string
			wantBody string
		}{
			{"Placed", testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, orderID, placedData("first@example.com")), "is placed", "Delivery to: 12 Linking Road"},
			// As the payment service publishes it: with the address.
			{"PaidWithAddress", testenv.Delivery(t, broker.QueueEmail, events.OrderPaid, orderID, map[string]any{"charge_id": "ch_7", "amount_cents": 1350, "email": "first@example.com"}),
				"Payment received", "INR 13.50"},
			// events.Paid alone: the address of the order.placed mail.
			{"PaidWithoutAddress", testenv.Delivery(t, broker.QueueEmail, events.OrderPaid, orderID, events.Paid{ChargeID: "ch_7", AmountCents: 1350}), "Payment received", "ch_7"},
			{"PaymentFailed", testenv.Delivery(t, broker.QueueEmail, events.OrderPaymentFailed, orderID, events.PaymentFailed{Reason: "card declined"}), "Payment failed", "card declined"},
			{"RiderNear", testenv.Delivery(t, broker.QueueEmail, events.OrderRiderNear, orderID, events.RiderNear{RiderID: "r-7", DistanceM: 247.6, Email: "first@example.com"}),
				"almost there", "about 250 m away"},
			{"Delivered", testenv.Delivery(t, broker.QueueEmail, events.OrderDelivered, orderID, events.StatusChanged{Status: "delivered", From: "picked_up", Email: "first@example.com"}),
				"delivered", "Enjoy your meal"},
			{"Cancelled", testenv.Delivery(t, broker.QueueEmail, events.OrderCancelled, orderID, events.StatusChanged{Status: "cancelled", From: "paid", Email: "first@example.com"}),
				"is cancelled", "goes back to you"},
			{"Refunded", testenv.Delivery(t, broker.QueueEmail, events.OrderRefunded, orderID, events.Refunded{RefundID: "re_1", ChargeID: "ch_7", AmountCents: 1350, Email: "first@example.com"}),
				"Refund", "refunded INR 13.50"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := h(ctx, tt.give); err != nil {
					t.Fatal(err)
				}
				got := mailsFor(sink, tt.give.MessageID)
				if len(got) != 1 || got[0].To[0] != "first@example.com" || !strings.Contains(got[0].Subject, tt.wantSubj) ||
					!strings.Contains(got[0].Subject, events.ShortID(orderID)) || !strings.Contains(got[0].Body, tt.wantBody) {
					t.Fatalf("mails = %+v", got)
				}
			})
		}
	})

	t.Run("ErrRecipientUnknownIsRetried", func(t *testing.T) {
		orderID := uuid.NewString()
		paid := testenv.Delivery(t, broker.QueueEmail, events.OrderPaid, orderID, events.Paid{ChargeID: "ch_8", AmountCents: 100})
		if err := h(ctx, paid); err == nil || broker.IsPermanent(err) {
			t.Fatalf("order.paid without address before order.placed: err = %v, want transient", err)
		}
		if err := h(ctx, testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, orderID, placedData("late@example.com"))); err != nil {
			t.Fatal(err)
		}
		if err := h(ctx, paid); err != nil {
			t.Fatal(err)
		}
		if got := mailsFor(sink, paid.MessageID); len(got) != 1 || got[0].To[0] != "late@example.com" {
			t.Fatalf("mails = %+v", got)
		}
	})

	t.Run("ErrTemporaryRefusalIsRetried", func(t *testing.T) {
		sink.SetRefuse(451)
		defer sink.SetRefuse(0)
		d := testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, uuid.NewString(), placedData("eater@example.com"))
		if err := h(ctx, d); err == nil || broker.IsPermanent(err) {
			t.Fatalf("err = %v, want transient", err)
		}
		if n := rows(t, d.MessageID); n != 0 {
			t.Fatalf("%d rows recorded for a refused mail, want 0", n)
		}
		sink.SetRefuse(0)
		if err := h(ctx, d); err != nil || len(mailsFor(sink, d.MessageID)) != 1 {
			t.Fatalf("retry: err %v, sent %d", err, len(mailsFor(sink, d.MessageID)))
		}
	})

	t.Run("ErrPermanentRefusalDeadLetters", func(t *testing.T) {
		sink.SetRefuse(550)
		defer sink.SetRefuse(0)
		d := testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, uuid.NewString(), placedData("eater@example.com"))
		if err := h(ctx, d); !broker.IsPermanent(err) || !errors.Is(err, ErrRejected) {
			t.Fatalf("err = %v, want permanent ErrRejected", err)
		}
		if n := rows(t, d.MessageID); n != 0 {
			t.Fatalf("%d rows recorded for a rejected mail, want 0", n)
		}
	})

	t.Run("ErrMalformedIsPermanent", func(t *testing.T) {
		orderID := uuid.NewString()
		tests := []struct {
			name string
			give broker.Delivery
		}{
			{"NotJSON", broker.Delivery{MessageID: uuid.NewString(), Body: []byte("{")}},
			{"OrderIDNotUUID", testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, "o-1", placedData("a@example.com"))},
			{"NotForThisQueue", testenv.Delivery(t, broker.QueueEmail, events.OrderAccepted, orderID, events.StatusChanged{Status: "accepted"})},
			{"HeaderInjection", testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, orderID, placedData("a@example.com\r\nBcc: b@example.com"))},
			{"NamedAddress", testenv.Delivery(t, broker.QueueEmail, events.OrderDelivered, orderID, events.StatusChanged{Email: "Eater <a@example.com>"})},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := h(ctx, tt.give); !broker.IsPermanent(err) {
					t.Fatalf("err = %v, want permanent", err)
				}
			})
		}
	})
}

// TestRateLimitDelaysInsteadOfFailing: a burst larger than the limit is
// sent, all of it, at the limiter's pace.
func TestRateLimitDelaysInsteadOfFailing(t *testing.T) {
	db := testenv.MustDB(t)
	sink := MustSink(t)
	const interval = 100 * time.Millisecond
	h := handlerOf(t, db, rate.NewLimiter(rate.Every(interval), 1), mustSender(t, sink.Addr()))
	const n = 4
	ds := make([]broker.Delivery, n)
	for i := range ds {
		ds[i] = testenv.Delivery(t, broker.QueueEmail, events.OrderPlaced, uuid.NewString(), placedData("burst@example.com"))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h(context.Background(), d) }()
	}
	wg.Wait()
	// A lower bound only: the limiter guarantees the spacing, the machine
	// may well be slower.
	if took := time.Since(start); took < (n-1)*interval {
		t.Fatalf("%d mails took %v, faster than the limit allows (%v apart)", n, took, interval)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("a burst failed instead of waiting: %v", err)
	}
	for _, d := range ds {
		if len(mailsFor(sink, d.MessageID)) != 1 {
			t.Fatalf("mail for %s not sent once", d.MessageID)
		}
	}
}

// TestRun runs the service against the real broker, database and an
// in-process SMTP server: an event published to the orders exchange is
// mailed and recorded; garbage is dead-lettered at once.
//
// The queue is shared with every email service on this broker (the e2e
// stack, make run), and any of them may take the event: the test checks the
// effect they all record, in Postgres. The handler tests check the mail.
func TestRun(t *testing.T) {
	db := testenv.MustDB(t)
	sink := MustSink(t)
	// The rate limit has its own test; other tests' events may wait in the
	// shared queue ahead of this one's.
	testenv.MustRun(t, run, map[string]string{"SMTP_ADDR": sink.Addr(), "EMAIL_RATE_PER_MINUTE": "60000"})
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()

	t.Run("OK", func(t *testing.T) {
		orderID := uuid.NewString()
		e, err := events.New(uuid.NewString(), events.OrderDelivered, orderID, time.Now(),
			events.StatusChanged{Status: events.StatusDelivered, From: events.StatusPickedUp, RestaurantID: "r-1", Email: "run@example.com"})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(e)
		testenv.Publish(t, pub, broker.ExchangeOrders, e.Type, e.ID, orderID, body)
		testenv.Eventually(t, 20*time.Second, "e-mail recorded", func() bool {
			var n int
			if err := db.QueryRow(context.Background(), "SELECT count(*) FROM emails_sent WHERE message_id = $1 AND recipient = 'run@example.com' AND kind = $2",
				e.ID, events.OrderDelivered).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n == 1
		})
	})

	t.Run("ErrMalformedDeadLettered", func(t *testing.T) {
		id := uuid.NewString()
		// Straight to the email queue, so no other consumer gets it.
		testenv.Publish(t, pub, "", broker.QueueEmail, id, "", []byte("hello"))
		m := testenv.MustDeadLettered(t, conn, broker.QueueEmail, id)
		if m.Headers[broker.HeaderReason] != broker.ReasonPermanent {
			t.Fatalf("dead-letter reason = %v, want %s", m.Headers[broker.HeaderReason], broker.ReasonPermanent)
		}
	})
}
