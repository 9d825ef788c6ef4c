// Package smtpsink is a real SMTP server that keeps what it receives in
// memory: the fake mail provider for local runs and tests. It can be told to
// refuse mail, temporarily (4xx) or for good (5xx), to exercise retries.
package smtpsink

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// maxMessages bounds the sink's memory; the oldest are dropped past it.
const maxMessages = 100_000

// Message is one received e-mail.
type Message struct {
	From      string    `json:"from"`
	To        []string  `json:"to"`
	Subject   string    `json:"subject"`
	MessageID string    `json:"message_id"`
	DabbaID   string    `json:"dabba_message_id"` // X-Dabba-Message-Id: the event behind the e-mail
	Body      string    `json:"body"`
	At        time.Time `json:"at"`
}

// Sink is the running SMTP server.
type Sink struct {
	srv *smtp.Server
	ln  net.Listener

	mu       sync.Mutex
	messages []Message
	refuse   int // SMTP code to refuse mail with; 0 accepts
}

// Start listens on addr and serves SMTP until Close.
func Start(addr string) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := &Sink{ln: ln}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &session{sink: s}, nil }))
	s.srv.Domain = "localhost"
	s.srv.MaxMessageBytes = 1 << 20
	s.srv.MaxRecipients = 50
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address the sink listens on.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Close stops the server.
func (s *Sink) Close() error { return s.srv.Close() }

// Messages returns a copy of what was received.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// SetRefuse makes the sink refuse every message with code (e.g. 451 or
// 550); 0 accepts again.
func (s *Sink) SetRefuse(code int) {
	s.mu.Lock()
	s.refuse = code
	s.mu.Unlock()
}

func (s *Sink) refusal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse == 0 {
		return nil
	}
	return &smtp.SMTPError{Code: s.refuse, Message: "mail refused (injected)"}
}

type session struct {
	sink *Sink
	from string
	to   []string
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if err := s.sink.refusal(); err != nil {
		return err
	}
	s.from = from
	return nil
}
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	if err := s.sink.refusal(); err != nil {
		return err
	}
	m, err := mail.ReadMessage(bufio.NewReader(r))
	if err != nil {
		return &smtp.SMTPError{Code: 554, Message: "malformed message: " + err.Error()}
	}
	body, err := io.ReadAll(m.Body)
	if err != nil {
		return err
	}
	msg := Message{From: s.from, To: s.to, Subject: m.Header.Get("Subject"), MessageID: m.Header.Get("Message-Id"),
		DabbaID: m.Header.Get("X-Dabba-Message-Id"), Body: string(body), At: time.Now().UTC()}
	s.sink.mu.Lock()
	s.sink.messages = append(s.sink.messages, msg)
	if len(s.sink.messages) > maxMessages {
		s.sink.messages = s.sink.messages[1:]
	}
	s.sink.mu.Unlock()
	return nil
}

// Handler serves the sink over HTTP: GET /messages[?to=] lists what was
// received, PUT /admin/refuse {"code": 451} sets the refusal.
func (s *Sink) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, r *http.Request) {
		to := r.URL.Query().Get("to")
		out := []Message{}
		for _, m := range s.Messages() {
			if to == "" || strings.EqualFold(strings.Join(m.To, ","), to) {
				out = append(out, m)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("PUT /admin/refuse", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Code int `json:"code"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&body); err != nil ||
			(body.Code != 0 && (body.Code < 400 || body.Code > 599)) {
			http.Error(w, `body must be {"code": 0 | 4xx | 5xx}`, http.StatusBadRequest)
			return
		}
		s.SetRefuse(body.Code)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, `{"status":"ok"}`) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, `{"status":"ready"}`) })
	return mux
}
