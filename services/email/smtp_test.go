package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
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

// mustSMTPSender returns a sender to addr, closed with the test.
func mustSMTPSender(tb testing.TB, addr string) *SMTPSender {
	tb.Helper()
	s, err := NewSMTPSender(addr, "Dabba Orders <orders@dabba.local>")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// mustTracedSender is mustSMTPSender recording the SMTP conversation, both
// ways, in the buffer it returns.
func mustTracedSender(tb testing.TB, addr string) (*SMTPSender, *syncBuffer) {
	tb.Helper()
	s := mustSMTPSender(tb, addr)
	s.trace = new(syncBuffer)
	return s, s.trace.(*syncBuffer)
}

// syncBuffer is a buffer written by Send's goroutines and the idle timer
// and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// count counts a client command in the conversation ("RSET", "QUIT",
// "MAIL FROM:"); mail bodies here never start a line with one.
func (b *syncBuffer) count(cmd string) int {
	n := 0
	for _, line := range strings.Split(b.String(), "\r\n") {
		if strings.HasPrefix(line, cmd) {
			n++
		}
	}
	return n
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

// testMail is a fit mail with a new id.
func testMail() Mail {
	return Mail{To: "eater@example.com", Subject: "Order paid", Body: "Thank you.", MessageID: uuid.NewString()}
}

// mustSendAll sends each of ms, and checks that the sink got each once.
func mustSendAll(tb testing.TB, sink *smtpsink.Sink, sender *SMTPSender, ms ...Mail) {
	tb.Helper()
	for _, m := range ms {
		if err := sender.Send(context.Background(), m); err != nil {
			tb.Fatalf("send %s: %v", m.MessageID, err)
		}
		if n := len(received(sink, m.MessageID)); n != 1 {
			tb.Fatalf("%d mails with X-Dabba-Message-Id %s, want 1", n, m.MessageID)
		}
	}
}

// waitStats waits until ok holds for the sink's counters: the server ends a
// session a moment after its last reply, or after its idle timeout.
func waitStats(tb testing.TB, s *smtpsink.Sink, ok func(smtpsink.Stats) bool) smtpsink.Stats {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("sink stats %+v after 10 s", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSMTPSenderSession(t *testing.T) {
	t.Run("OKManyMailsOneSession", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender, trace := mustTracedSender(t, sink.Addr())
		for range 50 {
			mustSendAll(t, sink, sender, testMail())
		}
		if st := sink.Stats(); st.Sessions != 1 || st.Received != 50 {
			t.Fatalf("stats %+v, want 50 mails in 1 session", st)
		}
		if ehlo, mail, quit := trace.count("EHLO "), trace.count("MAIL FROM:"), trace.count("QUIT"); ehlo != 1 || mail != 50 || quit != 0 {
			t.Fatalf("%d EHLO, %d MAIL, %d QUIT; want 1, 50, 0", ehlo, mail, quit)
		}
	})
	t.Run("OKRefusedMailIsReset", func(t *testing.T) {
		tests := []struct {
			name      string
			code      int
			permanent bool
		}{
			{"Temporary451", 451, false},
			{"Permanent550", 550, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				sink := mustSMTPSink(t)
				sender, trace := mustTracedSender(t, sink.Addr())
				mustSendAll(t, sink, sender, testMail())
				sink.SetRefuse(tt.code)
				refused := testMail()
				err := sender.Send(context.Background(), refused)
				var serr *smtp.SMTPError
				if !errors.As(err, &serr) || serr.Code != tt.code || errors.Is(err, ErrRejected) != tt.permanent {
					t.Fatalf("err = %v, want SMTP %d, permanent %v", err, tt.code, tt.permanent)
				}
				sink.SetRefuse(0)
				mustSendAll(t, sink, sender, testMail(), testMail())
				if n := len(received(sink, refused.MessageID)); n != 0 {
					t.Fatalf("refused mail received %d times", n)
				}
				// One refusal (no retry inside Send), one RSET after it, and
				// the session kept.
				if st := sink.Stats(); st.Refused != 1 || st.Sessions != 1 || st.Received != 3 {
					t.Fatalf("stats %+v, want 1 refused and 3 received in 1 session", st)
				}
				if n := trace.count("RSET"); n != 1 {
					t.Fatalf("%d RSET, want 1 after the refused mail", n)
				}
			})
		}
	})
	t.Run("OKServerHungUpOnIdleSession", func(t *testing.T) {
		sink, err := smtpsink.StartConfig("127.0.0.1:0", smtpsink.Config{IdleTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sink.Close() })
		sender := mustSMTPSender(t, sink.Addr())
		sender.idleTimeout = time.Hour // the server hangs up first
		mustSendAll(t, sink, sender, testMail())
		waitStats(t, sink, func(st smtpsink.Stats) bool { return st.Open == 0 })
		// The old session answers 421 or nothing at all; Send opens a
		// new one and sends once more, unseen by the caller.
		mustSendAll(t, sink, sender, testMail(), testMail())
		if st := sink.Stats(); st.Sessions != 2 || st.Received != 3 {
			t.Fatalf("stats %+v, want 3 mails in 2 sessions", st)
		}
	})
	t.Run("OKIdleSessionQuit", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender, trace := mustTracedSender(t, sink.Addr())
		sender.idleTimeout = 50 * time.Millisecond
		mustSendAll(t, sink, sender, testMail())
		waitStats(t, sink, func(st smtpsink.Stats) bool { return st.Open == 0 })
		if n := trace.count("QUIT"); n != 1 {
			t.Fatalf("%d QUIT, want the idle session quit", n)
		}
		mustSendAll(t, sink, sender, testMail())
		if st := sink.Stats(); st.Sessions != 2 {
			t.Fatalf("stats %+v, want 2 sessions", st)
		}
	})
	t.Run("OKClose", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender, trace := mustTracedSender(t, sink.Addr())
		mustSendAll(t, sink, sender, testMail())
		if err := sender.Close(); err != nil {
			t.Fatal(err)
		}
		if n := trace.count("QUIT"); n != 1 || !strings.Contains(trace.String(), "221 ") {
			t.Fatalf("%d QUIT, want 1 answered with 221", n)
		}
		waitStats(t, sink, func(st smtpsink.Stats) bool { return st.Open == 0 })
		if err := sender.Send(context.Background(), testMail()); err == nil || errors.Is(err, ErrRejected) {
			t.Fatalf("Send after Close: err = %v, want a transient error", err)
		}
		if err := sender.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if st := sink.Stats(); st.Sessions != 1 || st.Received != 1 {
			t.Fatalf("stats %+v, want 1 mail in 1 session", st)
		}
	})
	t.Run("OKCloseUnused", func(t *testing.T) {
		if err := mustSMTPSender(t, "127.0.0.1:1").Close(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("OKConcurrentSends", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender := mustSMTPSender(t, sink.Addr())
		const workers, each = 8, 25
		ids := make(chan string, workers*each)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range each {
					m := testMail()
					if err := sender.Send(context.Background(), m); err != nil {
						t.Error(err)
						return
					}
					ids <- m.MessageID
				}
			})
		}
		wg.Wait()
		close(ids)
		n := 0
		for id := range ids {
			if got := len(received(sink, id)); got != 1 {
				t.Errorf("%d mails with X-Dabba-Message-Id %s, want 1", got, id)
			}
			n++
		}
		if st := sink.Stats(); n != workers*each || st.Received != workers*each || st.Sessions != 1 {
			t.Fatalf("%d sent, stats %+v; want %d mails in 1 session", n, st, workers*each)
		}
	})
	t.Run("ErrWaitForSessionHonoursCtx", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender := mustSMTPSender(t, sink.Addr())
		sender.slot <- struct{}{} // a Send in progress, for as long as the test likes
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- sender.Send(ctx, testMail()) }()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want a transient deadline error", err)
			}
		case <-time.After(time.Minute): // a liveness check, not a speed one
			t.Fatal("Send still waiting for the session a minute after its deadline")
		}
		<-sender.slot
		mustSendAll(t, sink, sender, testMail())
	})
}

// TestSMTPSenderLostSession covers what the sink cannot do: a server that
// hangs up without a word, between mails or before its reply to DATA.
func TestSMTPSenderLostSession(t *testing.T) {
	t.Run("OKSilentHangUpBetweenMails", func(t *testing.T) {
		srv := startFlakySMTP(t, func(conn, mail int) string {
			if conn == 1 {
				return hangUpAfterReply
			}
			return reply
		})
		sender := mustSMTPSender(t, srv.addr())
		for range 3 {
			if err := sender.Send(context.Background(), testMail()); err != nil {
				t.Fatal(err)
			}
		}
		if conns, mails := srv.counts(); conns != 2 || mails != 3 {
			t.Fatalf("%d connections, %d mails; want 3 mails over 2 connections", conns, mails)
		}
	})
	t.Run("ErrLostBeforeDataReplyNotRetried", func(t *testing.T) {
		srv := startFlakySMTP(t, func(conn, mail int) string {
			if conn == 1 && mail == 2 {
				return hangUpBeforeReply
			}
			return reply
		})
		sender := mustSMTPSender(t, srv.addr())
		if err := sender.Send(context.Background(), testMail()); err != nil {
			t.Fatal(err)
		}
		// The server may have taken this one: only the caller may decide
		// to send it again.
		if err := sender.Send(context.Background(), testMail()); err == nil || errors.Is(err, ErrRejected) {
			t.Fatalf("err = %v, want a transient error", err)
		}
		if conns, mails := srv.counts(); conns != 1 || mails != 2 {
			t.Fatalf("%d connections, %d mails; want 2 mails over 1 connection (no resend)", conns, mails)
		}
		if err := sender.Send(context.Background(), testMail()); err != nil {
			t.Fatal(err)
		}
		if conns, mails := srv.counts(); conns != 2 || mails != 3 {
			t.Fatalf("%d connections, %d mails; want the next mail on a new connection", conns, mails)
		}
	})
}

// What a flakySMTP does once it has read a message.
const (
	reply             = "reply"               // 250, and go on
	hangUpAfterReply  = "hang up after reply" // 250, then close
	hangUpBeforeReply = "hang up before reply"
)

// flakySMTP is a minimal SMTP server that takes every command and, after
// each message, does what after says for that connection and message (both
// counted from 1).
type flakySMTP struct {
	ln    net.Listener
	after func(conn, mail int) string

	mu           sync.Mutex
	conns, mails int
}

func startFlakySMTP(tb testing.TB, after func(conn, mail int) string) *flakySMTP {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &flakySMTP{ln: ln, after: after}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns++
			n := f.conns
			f.mu.Unlock()
			wg.Go(func() { f.serve(c, n) })
		}
	})
	return f
}

func (f *flakySMTP) addr() string { return f.ln.Addr().String() }

func (f *flakySMTP) counts() (conns, mails int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns, f.mails
}

func (f *flakySMTP) serve(c net.Conn, conn int) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute)) // a test's connection, not a real idle one
	r := bufio.NewReader(c)
	say := func(line string) { _, _ = c.Write([]byte(line + "\r\n")) }
	say("220 flaky")
	mails := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
		case cmd == "DATA":
			say("354 go on")
			for line != ".\r\n" {
				if line, err = r.ReadString('\n'); err != nil {
					return
				}
			}
			mails++
			f.mu.Lock()
			f.mails++
			f.mu.Unlock()
			switch f.after(conn, mails) {
			case hangUpBeforeReply:
				return
			case hangUpAfterReply:
				say("250 queued")
				return
			}
			say("250 queued")
		case cmd == "QUIT":
			say("221 bye")
			return
		default: // EHLO, MAIL, RCPT, RSET
			say("250 ok")
		}
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

// TestSMTPSenderSendAll sends batches on one session: with the sink's
// pipelining and chunking, each batch goes out as one write, an RSET
// between its mails; a recipient refused in the middle fails that mail
// alone, and the session goes on. A server that offers neither gets the
// same mails one command at a time.
func TestSMTPSenderSendAll(t *testing.T) {
	t.Run("OKPipelined", func(t *testing.T) {
		sink := mustSMTPSink(t)
		sender, trace := mustTracedSender(t, sink.Addr())
		refused := testMail()
		refused.To = "refuse-550@example.com"
		batch := []Mail{testMail(), testMail(), refused, testMail()}
		errs := sender.SendAll(context.Background(), batch)
		for i, err := range errs {
			if want := i == 2; (err != nil) != want || want && !errors.Is(err, ErrRejected) {
				t.Fatalf("mail %d: %v; want only mail 2 rejected for good", i, err)
			}
		}
		for i, m := range batch {
			if n, want := len(received(sink, m.MessageID)), map[bool]int{true: 0, false: 1}[i == 2]; n != want {
				t.Fatalf("mail %d received %d times, want %d", i, n, want)
			}
		}
		if bdat, rset := trace.count("BDAT "), trace.count("RSET"); bdat != 4 || rset != 3 {
			t.Fatalf("%d BDAT, %d RSET; want 4 mails in chunks, an RSET between each", bdat, rset)
		}
		mustSendAll(t, sink, sender, testMail())
		if st := sink.Stats(); st.Sessions != 1 || st.Received != 4 {
			t.Fatalf("stats %+v, want 4 mails in 1 session", st)
		}
	})
	t.Run("OKOneCommandAtATime", func(t *testing.T) {
		srv := startFlakySMTP(t, func(conn, mail int) string { return reply })
		sender, trace := mustTracedSender(t, srv.addr())
		for i, err := range sender.SendAll(context.Background(), []Mail{testMail(), testMail(), testMail()}) {
			if err != nil {
				t.Fatalf("mail %d: %v", i, err)
			}
		}
		if conns, mails := srv.counts(); conns != 1 || mails != 3 {
			t.Fatalf("%d connections, %d mails; want 3 mails over 1 connection", conns, mails)
		}
		if n := trace.count("BDAT"); n != 0 {
			t.Fatalf("%d BDAT to a server that offers no chunking", n)
		}
	})
}
