package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"

	"github.com/dabba/dabba/services/email/smtpsink"
)

// mustSMTPSink starts an in-process SMTP sink, closed with the test.
func mustSMTPSink(tb testing.TB) *smtpsink.Sink {
	tb.Helper()
	s, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func mustSMTPSender(tb testing.TB, addr string) *SMTPSender {
	tb.Helper()
	s, err := NewSMTPSender(addr, "Dabba Orders <orders@dabba.local>")
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestSMTPSenderSend(t *testing.T) {
	sink := mustSMTPSink(t)
	sender := mustSMTPSender(t, sink.Addr())
	ctx := context.Background()

	t.Run("OK", func(t *testing.T) {
		id := uuid.NewString()
		long := strings.Repeat("Chicken biryani ₹450, ", 12) // longer than a mail line may be
		m := Mail{To: "eater@example.com", Subject: "Order paid: ₹900 — thank you", Body: "Hello!\n" + long + "\n.\nBye", MessageID: id}
		if err := sender.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
		got := received(sink, id)
		if len(got) != 1 {
			t.Fatalf("%d mails with X-Dabba-Message-Id %s, want 1", len(got), id)
		}
		g := got[0]
		if g.From != "orders@dabba.local" || strings.Join(g.To, ",") != "eater@example.com" {
			t.Fatalf("envelope from %q to %v", g.From, g.To)
		}
		if g.Subject != m.Subject || g.Body != m.Body+"\n" || g.MessageID != "<"+id+"@dabba.local>" {
			t.Fatalf("got subject %q, message-id %q, body %q", g.Subject, g.MessageID, g.Body)
		}
		h := func(k string) string { return strings.Join(g.Header[k], ",") }
		if h("From") != `"Dabba Orders" <orders@dabba.local>` || h("To") != "eater@example.com" {
			t.Fatalf("From %q, To %q", h("From"), h("To"))
		}
		if d, err := time.Parse(time.RFC1123Z, h("Date")); err != nil || time.Since(d) > time.Hour {
			t.Fatalf("Date %q: %v", h("Date"), err)
		}
	})
	t.Run("ErrTemporaryRefusalIsTransient", func(t *testing.T) {
		sink.SetRefuse(451)
		defer sink.SetRefuse(0)
		err := sender.Send(ctx, Mail{To: "eater@example.com", Subject: "s", Body: "b", MessageID: uuid.NewString()})
		var serr *smtp.SMTPError
		if err == nil || errors.Is(err, ErrRejected) || !errors.As(err, &serr) || serr.Code != 451 {
			t.Fatalf("err = %v, want a transient 451", err)
		}
	})
	t.Run("ErrPermanentRefusalIsRejected", func(t *testing.T) {
		sink.SetRefuse(550)
		defer sink.SetRefuse(0)
		if err := sender.Send(ctx, Mail{To: "eater@example.com", Subject: "s", Body: "b", MessageID: uuid.NewString()}); !errors.Is(err, ErrRejected) {
			t.Fatalf("err = %v, want ErrRejected", err)
		}
	})
	t.Run("ErrUnfitMailIsRejected", func(t *testing.T) {
		before := len(sink.Messages())
		tests := []struct {
			name string
			give Mail
		}{
			{"ErrNotAnAddress", Mail{To: "eater at example", Subject: "s", MessageID: "id-1"}},
			{"ErrHeaderInjectionInTo", Mail{To: "eater@example.com\r\nBcc: spy@example.com", Subject: "s", MessageID: "id-2"}},
			{"ErrLineBreakInSubject", Mail{To: "eater@example.com", Subject: "s\r\nBcc: spy@example.com", MessageID: "id-3"}},
			{"ErrNoMessageID", Mail{To: "eater@example.com", Subject: "s"}},
			{"ErrMessageIDNeedsQuoting", Mail{To: "eater@example.com", Subject: "s", MessageID: "a b>"}},
		}
		for _, tt := range tests {
			if err := sender.Send(ctx, tt.give); !errors.Is(err, ErrRejected) {
				t.Errorf("%s: err = %v, want ErrRejected", tt.name, err)
			}
		}
		if n := len(sink.Messages()); n != before {
			t.Fatalf("%d unfit mails reached the server", n-before)
		}
	})
	t.Run("ErrServerDownIsTransient", func(t *testing.T) {
		down, err := smtpsink.Start("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_ = down.Close()
		err = mustSMTPSender(t, down.Addr()).Send(ctx, Mail{To: "eater@example.com", Subject: "s", MessageID: "id-4"})
		if err == nil || errors.Is(err, ErrRejected) {
			t.Fatalf("err = %v, want a transient error", err)
		}
	})
	t.Run("ErrDeadlineHonoured", func(t *testing.T) {
		// A server that accepts the connection and never greets.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		slow := mustSMTPSender(t, ln.Addr().String())
		slow.commandTimeout = time.Hour // only ctx can end the wait
		tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- slow.Send(tctx, Mail{To: "eater@example.com", Subject: "s", MessageID: "id-5"}) }()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want a transient deadline error", err)
			}
		case <-time.After(time.Minute): // a liveness check, not a speed one
			t.Fatal("Send still waiting a minute after its deadline")
		}
	})
}

func TestNewSMTPSenderErrBadFrom(t *testing.T) {
	if _, err := NewSMTPSender("127.0.0.1:1025", "not an address"); err == nil {
		t.Fatal("accepted a malformed From address")
	}
}

func received(s *smtpsink.Sink, dabbaID string) []smtpsink.Message {
	var out []smtpsink.Message
	for _, m := range s.Messages() {
		if m.DabbaID == dabbaID {
			out = append(out, m)
		}
	}
	return out
}
