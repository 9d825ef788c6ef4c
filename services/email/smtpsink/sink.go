// Package smtpsink is a real SMTP server that keeps what it receives in
// memory: the fake mail provider for local runs and tests. It can be told to
// refuse mail, temporarily (4xx) or for good (5xx), to exercise retries and
// dead-lettering, all mail (SetRefuse) or one recipient's: an address
// "refuse-<code>@…" is refused at RCPT with that code every time, an
// address "refuse-first-<code>@…" only the first time it is offered, so
// that the next attempt (a retry, a replay) goes through. It shows its
// inbox over HTTP.
package smtpsink

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// The sink forgets its oldest messages past either bound; the counters keep
// counting. A test run stays far below both.
const (
	maxMessages  = 100_000
	maxBodyBytes = 64 << 20
)

// Message is one received e-mail.
type Message struct {
	From    string   `json:"from"` // envelope sender (MAIL FROM)
	To      []string `json:"to"`   // envelope recipients (RCPT TO)
	Subject string   `json:"subject"`
	// Body is the decoded text, with LF line ends.
	Body      string `json:"body"`
	MessageID string `json:"message_id"` // the Message-ID header
	// DabbaID is the X-Dabba-Message-Id header: the event the mail is
	// about, so a ledger can count each event's mail exactly once.
	DabbaID string `json:"dabba_message_id"`
	// Header holds every header as sent (keys in canonical form,
	// "Message-Id"), for tests that check what the fields above leave out.
	Header     map[string][]string `json:"header"`
	ReceivedAt time.Time           `json:"received_at"`
}

// Stats counts what the sink was offered.
type Stats struct {
	Received   int `json:"received"`    // messages accepted, including any forgotten since
	Refused    int `json:"refused"`     // transactions refused by SetRefuse
	RefuseCode int `json:"refuse_code"` // the current refusal, 0 when accepting
	// Sessions counts SMTP sessions opened (a connection's first EHLO or
	// HELO), so a test can tell mails sent over one connection from mails
	// that each paid for their own.
	Sessions int `json:"sessions"`
	Open     int `json:"open"` // sessions not ended yet (no QUIT, hang-up or timeout)
}

// Config tunes a sink; the zero value is what Start uses.
type Config struct {
	// IdleTimeout is how long the server waits for a client's next line
	// before it answers 421 and hangs up, as real servers drop idle
	// connections. 0 means 30 s.
	IdleTimeout time.Duration
}

// Sink is a running SMTP server and its inbox.
type Sink struct {
	srv  *smtp.Server
	ln   net.Listener
	done chan struct{} // closed when Serve returns
	mux  *http.ServeMux

	mu        sync.Mutex
	messages  []Message
	bodyBytes int
	stats     Stats
	// refusedOnce holds the "refuse-first-" addresses refused already.
	refusedOnce map[string]bool
}

// Start listens on addr ("127.0.0.1:0" picks a free port) and serves SMTP
// until Close or Shutdown.
func Start(addr string) (*Sink, error) { return StartConfig(addr, Config{}) }

// StartConfig is Start with the settings in c.
func StartConfig(addr string, c Config) (*Sink, error) {
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := &Sink{ln: ln, done: make(chan struct{}), refusedOnce: map[string]bool{}}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return s.newSession(), nil }))
	s.srv.Domain = "smtpsink.dabba.local"
	s.srv.MaxMessageBytes = 1 << 20
	s.srv.MaxRecipients = 50
	s.srv.ReadTimeout = c.IdleTimeout
	s.srv.WriteTimeout = 30 * time.Second
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /messages", s.handleMessages)
	s.mux.HandleFunc("GET /stats", s.handleStats)
	s.mux.HandleFunc("PUT /admin/refuse", s.handleRefuse)
	s.mux.HandleFunc("GET /healthz", handleHealth)
	s.mux.HandleFunc("GET /readyz", handleHealth)
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns once closed; nothing else stops it
	}()
	return s, nil
}

// Addr is the address the sink listens on, with the port it got.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Close stops the server at once, dropping sessions in progress.
func (s *Sink) Close() error {
	err := s.srv.Close()
	s.closeListener()
	<-s.done
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and waits, until ctx is done, for
// the sessions in progress to end.
func (s *Sink) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.closeListener()
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shutdown smtp: %w", err)
	}
	<-s.done
	return nil
}

// closeListener closes the listener go-smtp may not know of yet: its Close
// only closes listeners Serve has registered, and Serve, started in a
// goroutine, may not have run when a test closes the sink at once.
func (s *Sink) closeListener() { _ = s.ln.Close() }

// Messages returns a copy of the inbox, oldest first.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Stats returns the sink's counters.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SetRefuse makes the sink refuse every new mail transaction with code: a
// 4xx (e.g. 451) is a temporary failure a sender retries, a 5xx (e.g. 550)
// a permanent one. 0 accepts mail again.
func (s *Sink) SetRefuse(code int) {
	s.mu.Lock()
	s.stats.RefuseCode = code
	s.mu.Unlock()
}

// refusal counts and returns the current refusal, if any.
func (s *Sink) refusal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats.RefuseCode == 0 {
		return nil
	}
	s.stats.Refused++
	return &smtp.SMTPError{Code: s.stats.RefuseCode, Message: "mail refused (injected failure)"}
}

// newSession counts a session go-smtp opens; its Logout counts it ended.
func (s *Sink) newSession() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Sessions++
	s.stats.Open++
	return &session{sink: s}
}

func (s *Sink) store(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	s.bodyBytes += len(m.Body)
	s.stats.Received++
	for len(s.messages) > maxMessages || s.bodyBytes > maxBodyBytes {
		s.bodyBytes -= len(s.messages[0].Body)
		s.messages[0] = Message{}
		s.messages = s.messages[1:]
	}
}

// session is one SMTP connection's state.
type session struct {
	sink *Sink
	from string
	to   []string
}

func (s *session) Reset() { s.from, s.to = "", nil }

// Logout is called once, whichever way the session ended.
func (s *session) Logout() error {
	s.sink.mu.Lock()
	s.sink.stats.Open--
	s.sink.mu.Unlock()
	return nil
}

// Mail refuses the transaction when the sink is told to, before anything is
// sent: the way a real server turns mail away.
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if err := s.sink.refusal(); err != nil {
		return err
	}
	s.from = from
	return nil
}

// Rcpt refuses a recipient "refuse-<code>@…" with that code, so that a test
// can have one mail of many refused, and a recipient "refuse-first-<code>@…"
// the same way the first time it is offered only, so that a test can have
// one mail fail and its retry, or the mails after it, go through.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if code, first, ok := injectedRefusal(to); ok && (!first || s.sink.refuseFirst(to)) {
		return &smtp.SMTPError{Code: code, Message: "recipient refused (injected failure)"}
	}
	s.to = append(s.to, to)
	return nil
}

// injectedRefusal reads the refusal an address asks for: "refuse-<code>@…"
// always (first false), "refuse-first-<code>@…" once (first true), code
// being 3 digits from 400 to 599. ok is false for any other address.
func injectedRefusal(to string) (code int, first, ok bool) {
	local, _, found := strings.Cut(to, "@")
	if !found {
		return 0, false, false
	}
	digits, first := strings.CutPrefix(local, "refuse-first-")
	if !first {
		if digits, ok = strings.CutPrefix(local, "refuse-"); !ok {
			return 0, false, false
		}
	}
	n, err := strconv.Atoi(digits)
	if err != nil || len(digits) != 3 || n < 400 || n > 599 {
		return 0, false, false
	}
	return n, first, true
}

// refuseFirst reports whether to is offered for the first time, and
// remembers that it was.
func (s *Sink) refuseFirst(to string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refusedOnce[to] {
		return false
	}
	s.refusedOnce[to] = true
	return true
}

func (s *session) Data(r io.Reader) error {
	m, err := mail.ReadMessage(bufio.NewReader(r))
	if err != nil {
		_, _ = io.Copy(io.Discard, r) // r must be consumed
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "malformed message: " + err.Error()}
	}
	body, err := decodeBody(m)
	_, _ = io.Copy(io.Discard, r)
	if err != nil {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "undecodable body: " + err.Error()}
	}
	// Refused again here in case SetRefuse came during the transaction.
	if err := s.sink.refusal(); err != nil {
		return err
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		subject = m.Header.Get("Subject")
	}
	s.sink.store(Message{From: s.from, To: append([]string(nil), s.to...), Subject: subject, Body: body,
		MessageID: m.Header.Get("Message-Id"), DabbaID: m.Header.Get("X-Dabba-Message-Id"), Header: m.Header, ReceivedAt: time.Now().UTC()})
	return nil
}

// decodeBody undoes the transfer encoding of a single-part text message;
// the sink does not take multipart mail apart.
func decodeBody(m *mail.Message) (string, error) {
	var r io.Reader = m.Body
	switch strings.ToLower(strings.TrimSpace(m.Header.Get("Content-Transfer-Encoding"))) {
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, r)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(string(b), "\r\n", "\n"), nil
}

// ServeHTTP serves the sink's inbox and switches:
//
//	GET /messages[?to=&dabba_message_id=] received mail, oldest first
//	GET /stats                            Stats
//	PUT /admin/refuse {"code": 451}       refuse mail with code; 0 accepts again
//	GET /healthz, /readyz
//
// A recipient refuses mail by its address, whatever the switch: always for
// "refuse-<code>@…", the first time it is offered for
// "refuse-first-<code>@…" (each such address once, for the sink's life).
func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handleMessages handles "GET /messages".
func (s *Sink) handleMessages(w http.ResponseWriter, r *http.Request) {
	to, id := r.URL.Query().Get("to"), r.URL.Query().Get("dabba_message_id")
	out := []Message{}
	for _, m := range s.Messages() {
		if (to == "" || hasRecipient(m, to)) && (id == "" || m.DabbaID == id) {
			out = append(out, m)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func hasRecipient(m Message, to string) bool {
	for _, t := range m.To {
		if strings.EqualFold(t, to) {
			return true
		}
	}
	return false
}

// handleStats handles "GET /stats".
func (s *Sink) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// handleRefuse handles "PUT /admin/refuse".
func (s *Sink) handleRefuse(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Code *int `json:"code"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Code == nil || (*body.Code != 0 && (*body.Code < 400 || *body.Code > 599)) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body must be {"code": 0, 4xx or 5xx}`})
		return
	}
	s.SetRefuse(*body.Code)
	w.WriteHeader(http.StatusNoContent)
}

func handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
