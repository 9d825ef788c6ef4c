package main

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/services/email/smtpsink"
	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func TestHandleOrderEmail(t *testing.T) {
	db := testenv.MustDB(t)
	sink, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	h := handleOrderEmail(db, rate.NewLimiter(rate.Inf, 1), mustSender(t, sink.Addr()))
	ctx := context.Background()
	placed := func() broker.Delivery {
		e, _ := events.New(uuid.NewString(), events.OrderPlaced, uuid.NewString(), time.Now(),
			events.Placed{Email: "eater@example.com", TotalCents: 1234, Items: []events.Item{{SKU: "s"}}})
		body, _ := json.Marshal(e)
		return broker.Delivery{MessageID: e.ID, RoutingKey: e.Type, Body: body, Attempt: 1}
	}
	sentFor := func(id string) int {
		n := 0
		for _, m := range sink.Messages() {
			if m.DabbaID == id {
				n++
			}
		}
		return n
	}

	t.Run("OKOnceWhenDeliveredTwice", func(t *testing.T) {
		d := placed()
		for i := 0; i < 2; i++ {
			if err := h(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		if n := sentFor(d.MessageID); n != 1 {
			t.Fatalf("%d mails sent, want 1", n)
		}
	})
	t.Run("ErrTemporaryRefusalIsRetried", func(t *testing.T) {
		sink.SetRefuse(451)
		defer sink.SetRefuse(0)
		d := placed()
		err := h(ctx, d)
		if err == nil || broker.IsPermanent(err) {
			t.Fatalf("err = %v, want transient", err)
		}
		sink.SetRefuse(0)
		if err := h(ctx, d); err != nil || sentFor(d.MessageID) != 1 {
			t.Fatalf("retry: err %v, sent %d", err, sentFor(d.MessageID))
		}
	})
	t.Run("ErrPermanentRefusalDeadLetters", func(t *testing.T) {
		sink.SetRefuse(550)
		defer sink.SetRefuse(0)
		if err := h(ctx, placed()); !broker.IsPermanent(err) || !errors.Is(err, ErrRejected) {
			t.Fatalf("err = %v, want permanent ErrRejected", err)
		}
	})
}

func TestRateLimitQueuesInsteadOfFailing(t *testing.T) {
	db := testenv.MustDB(t)
	sink, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	// 1 mail per 200 ms: the third must wait its turn, and succeed.
	limiter := rate.NewLimiter(rate.Every(200*time.Millisecond), 1)
	h := handleOrderEmail(db, limiter, mustSender(t, sink.Addr()))
	for i := 0; i < 3; i++ {
		e, _ := events.New(uuid.NewString(), events.OrderPlaced, uuid.NewString(), time.Now(), events.Placed{Email: "a@example.com"})
		body, _ := json.Marshal(e)
		if err := h(context.Background(), broker.Delivery{MessageID: e.ID, Body: body, Attempt: 1}); err != nil {
			t.Fatalf("mail %d: %v", i, err)
		}
	}
	if n := len(sink.Messages()); n != 3 {
		t.Fatalf("%d mails, want 3", n)
	}
}

func mustSender(t *testing.T, addr string) *SMTPSender {
	t.Helper()
	s, err := NewSMTPSender(addr, "Dabba <orders@dabba.local>")
	if err != nil {
		t.Fatal(err)
	}
	return s
}
