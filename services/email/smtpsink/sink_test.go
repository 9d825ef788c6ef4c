package smtpsink

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	netsmtp "net/smtp"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// MustStart starts a sink on a free loopback port, closed with the test.
func MustStart(tb testing.TB) *Sink {
	tb.Helper()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return s
}

const qpMail = "From: Dabba <orders@dabba.local>\r\n" +
	"To: eater@example.com\r\n" +
	"Subject: =?utf-8?q?Order_paid_=E2=82=B9900?=\r\n" +
	"Message-ID: <ev-1@dabba.local>\r\n" +
	"X-Dabba-Message-Id: ev-1\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n" +
	"\r\n" +
	"Your biryani =E2=82=B9900 is on its way.\r\n" +
	"Thanks!\r\n"

func TestSinkReceives(t *testing.T) {
	s := MustStart(t)

	t.Run("OKGoSMTPClient", func(t *testing.T) {
		if err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail)); err != nil {
			t.Fatal(err)
		}
		got := s.Messages()
		if len(got) != 1 {
			t.Fatalf("%d messages, want 1", len(got))
		}
		m := got[0]
		want := Message{From: "orders@dabba.local", To: []string{"eater@example.com"}, Subject: "Order paid ₹900",
			Body: "Your biryani ₹900 is on its way.\nThanks!\n", MessageID: "<ev-1@dabba.local>", DabbaID: "ev-1"}
		if m.From != want.From || strings.Join(m.To, ",") != strings.Join(want.To, ",") || m.Subject != want.Subject ||
			m.Body != want.Body || m.MessageID != want.MessageID || m.DabbaID != want.DabbaID || m.ReceivedAt.IsZero() {
			t.Fatalf("got  %+v\nwant %+v", m, want)
		}
	})
	t.Run("OKNetSMTPClient", func(t *testing.T) {
		msg := "Subject: plain\r\nX-Dabba-Message-Id: ev-2\r\n\r\nhello\r\n"
		if err := netsmtp.SendMail(s.Addr(), nil, "orders@dabba.local", []string{"Other@Example.com", "third@example.com"}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if n := len(s.Messages()); n != 2 {
			t.Fatalf("%d messages, want 2", n)
		}
	})
	t.Run("OKHTTPInboxFilters", func(t *testing.T) {
		srv := httptest.NewServer(s)
		defer srv.Close()
		tests := []struct {
			give string
			want []string // DabbaIDs
		}{
			{"", []string{"ev-1", "ev-2"}},
			{"?to=eater@example.com", []string{"ev-1"}},
			{"?to=other@example.com", []string{"ev-2"}}, // addresses compare case-insensitively
			{"?to=third@example.com", []string{"ev-2"}},
			{"?dabba_message_id=ev-2", []string{"ev-2"}},
			{"?to=nobody@example.com", []string{}},
		}
		for _, tt := range tests {
			code, body := do(t, http.MethodGet, srv.URL+"/messages"+tt.give, "")
			var ms []Message
			if code != http.StatusOK || json.Unmarshal([]byte(body), &ms) != nil {
				t.Fatalf("GET /messages%s: %d %s", tt.give, code, body)
			}
			got := []string{}
			for _, m := range ms {
				got = append(got, m.DabbaID)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("GET /messages%s = %v, want %v", tt.give, got, tt.want)
			}
		}
	})
}

func TestSinkRefuses(t *testing.T) {
	tests := []struct {
		name string
		code int
	}{
		{"ErrTemporary451", 451},
		{"ErrPermanent550", 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := MustStart(t)
			s.SetRefuse(tt.code)
			err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail))
			var serr *smtp.SMTPError
			if !errors.As(err, &serr) || serr.Code != tt.code {
				t.Fatalf("err = %v, want SMTP %d", err, tt.code)
			}
			// The standard library's client sees the same reply.
			err = netsmtp.SendMail(s.Addr(), nil, "orders@dabba.local", []string{"eater@example.com"}, []byte(qpMail))
			var perr *textproto.Error
			if !errors.As(err, &perr) || perr.Code != tt.code {
				t.Fatalf("net/smtp err = %v, want %d", err, tt.code)
			}
			if st := s.Stats(); len(s.Messages()) != 0 || st.Refused != 2 || st.Received != 0 {
				t.Fatalf("refused mail stored: %d messages, stats %+v", len(s.Messages()), st)
			}
			s.SetRefuse(0)
			if err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail)); err != nil {
				t.Fatalf("after accepting again: %v", err)
			}
			if st := s.Stats(); len(s.Messages()) != 1 || st.Received != 1 {
				t.Fatalf("%d messages, stats %+v, want 1", len(s.Messages()), st)
			}
		})
	}
}

func TestInjectedRefusal(t *testing.T) {
	tests := []struct {
		give      string
		wantCode  int
		wantFirst bool
		wantOK    bool
	}{
		{"refuse-451@example.com", 451, false, true},
		{"refuse-550@example.com", 550, false, true},
		{"refuse-first-451@example.com", 451, true, true},
		{"refuse-first-550@a.example", 550, true, true},
		// "refuse-" must not read "first-…" as its code, nor take a code
		// that is not 3 digits of a failure.
		{"refuse-first-@example.com", 0, false, false},
		{"refuse-first-45@example.com", 0, false, false},
		{"refuse-first-4510@example.com", 0, false, false},
		{"refuse-first-+45@example.com", 0, false, false},
		{"refuse-first-250@example.com", 0, false, false},
		{"refuse-250@example.com", 0, false, false},
		{"refuse-600@example.com", 0, false, false},
		{"refuse-firs-451@example.com", 0, false, false},
		{"refuse-451", 0, false, false},
		{"eater@example.com", 0, false, false},
		{"x-refuse-451@example.com", 0, false, false},
	}
	for _, tt := range tests {
		code, first, ok := injectedRefusal(tt.give)
		if code != tt.wantCode || first != tt.wantFirst || ok != tt.wantOK {
			t.Errorf("injectedRefusal(%q) = %d, %v, %v; want %d, %v, %v", tt.give, code, first, ok, tt.wantCode, tt.wantFirst, tt.wantOK)
		}
	}
}

func TestSinkRefusesRecipient(t *testing.T) {
	t.Run("ErrAlways", func(t *testing.T) {
		s := MustStart(t)
		for range 2 {
			wantRefused(t, s, "refuse-550@example.com", 550)
		}
		if n := len(s.Messages()); n != 0 {
			t.Fatalf("%d messages stored", n)
		}
	})
	for _, code := range []int{451, 550} {
		t.Run(fmt.Sprintf("OKFirstOnly%d", code), func(t *testing.T) {
			s := MustStart(t)
			to := fmt.Sprintf("refuse-first-%d@example.com", code)
			wantRefused(t, s, to, code)
			for range 2 {
				if err := send(s.Addr(), "orders@dabba.local", []string{to}, strings.NewReader(qpMail)); err != nil {
					t.Fatalf("after the first refusal: %v", err)
				}
			}
			// Each address is refused once: another one is offered for
			// the first time.
			wantRefused(t, s, fmt.Sprintf("refuse-first-%d@other.example", code), code)
			if got := len(s.Messages()); got != 2 {
				t.Fatalf("%d messages stored, want 2", got)
			}
			for _, m := range s.Messages() {
				if len(m.To) != 1 || m.To[0] != to {
					t.Fatalf("stored a mail to %v", m.To)
				}
			}
		})
	}
	t.Run("OKNotAFailureCode", func(t *testing.T) {
		s := MustStart(t)
		for _, to := range []string{"refuse-first-250@example.com", "refuse-first-45@example.com"} {
			if err := send(s.Addr(), "orders@dabba.local", []string{to}, strings.NewReader(qpMail)); err != nil {
				t.Fatalf("%s: %v", to, err)
			}
		}
	})
}

// wantRefused sends a mail to to and wants it refused with code.
func wantRefused(t *testing.T, s *Sink, to string, code int) {
	t.Helper()
	err := send(s.Addr(), "orders@dabba.local", []string{to}, strings.NewReader(qpMail))
	var serr *smtp.SMTPError
	if !errors.As(err, &serr) || serr.Code != code {
		t.Fatalf("send to %s: err = %v, want SMTP %d", to, err, code)
	}
}

func TestSinkAdminRefuse(t *testing.T) {
	s := MustStart(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	tests := []struct {
		name string
		give string
		want int
	}{
		{"ErrNoCode", `{}`, http.StatusBadRequest},
		{"ErrNotAnSMTPFailure", `{"code": 250}`, http.StatusBadRequest},
		{"ErrBadJSON", `{"code":`, http.StatusBadRequest},
		{"OK451", `{"code": 451}`, http.StatusNoContent},
	}
	for _, tt := range tests {
		if code, body := do(t, http.MethodPut, srv.URL+"/admin/refuse", tt.give); code != tt.want {
			t.Fatalf("%s: %d %s, want %d", tt.name, code, body, tt.want)
		}
	}
	err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail))
	var serr *smtp.SMTPError
	if !errors.As(err, &serr) || serr.Code != 451 {
		t.Fatalf("err = %v, want SMTP 451", err)
	}
	if code, _ := do(t, http.MethodPut, srv.URL+"/admin/refuse", `{"code": 0}`); code != http.StatusNoContent {
		t.Fatalf("accept again: %d", code)
	}
	if err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail)); err != nil {
		t.Fatal(err)
	}
	code, body := do(t, http.MethodGet, srv.URL+"/stats", "")
	var st Stats
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil || st.Received != 1 || st.Refused != 1 || st.RefuseCode != 0 || st.Sessions != 2 {
		t.Fatalf("GET /stats = %d %s", code, body)
	}
}

func TestSinkCountsSessions(t *testing.T) {
	s := MustStart(t)
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if err := c.SendMail("orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail)); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Received != 3 || st.Sessions != 1 || st.Open != 1 {
		t.Fatalf("three mails over one connection: stats %+v, want 3 received in 1 open session", st)
	}
	if err := send(s.Addr(), "orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(qpMail)); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	// The server counts a session ended just after its 221 to QUIT.
	st := waitStats(t, s, func(st Stats) bool { return st.Open == 0 })
	if st.Received != 4 || st.Sessions != 2 {
		t.Fatalf("stats %+v, want 4 received in 2 sessions", st)
	}
}

func TestSinkIdleTimeout(t *testing.T) {
	s, err := StartConfig("127.0.0.1:0", Config{IdleTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	waitStats(t, s, func(st Stats) bool { return st.Sessions == 1 && st.Open == 0 })
	// The server said 421 before it hung up; the client reads it as the
	// reply to its next command.
	var serr *smtp.SMTPError
	if err := c.Noop(); !errors.As(err, &serr) || serr.Code != 421 {
		t.Fatalf("command after the idle timeout: err = %v, want SMTP 421", err)
	}
}

// waitStats waits until ok holds for the sink's counters: sessions end a
// moment after the client's last reply.
func waitStats(tb testing.TB, s *Sink, ok func(Stats) bool) Stats {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("stats %+v after 10 s", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSinkClose(t *testing.T) {
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := send(s.Addr(), "a@example.com", []string{"b@example.com"}, strings.NewReader(qpMail)); err == nil {
		t.Fatal("sent to a closed sink")
	}
}

// send delivers msg over plain SMTP with the go-smtp client (its SendMail
// insists on STARTTLS, which a loopback sink has no reason to offer).
func send(addr, from string, to []string, msg io.Reader) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, to, msg); err != nil {
		return err
	}
	return c.Quit()
}

func do(tb testing.TB, method, url, body string) (int, string) {
	tb.Helper()
	r, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
