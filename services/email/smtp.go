package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// ErrRejected means the mail cannot be delivered as it is: the SMTP server
// refused it for good (a 5xx reply), or the mail itself is unfit to send (a
// malformed address, a line break in a header). Retrying will not help, so
// the consumer dead-letters it. Every other error from Send is transient.
var ErrRejected = errors.New("mail rejected")

// Mail is one e-mail to send.
type Mail struct {
	To      string // "eater@example.com" or "Name <eater@example.com>"
	Subject string
	Body    string // plain text
	// MessageID is the id of the event the mail is about. It is sent as
	// X-Dabba-Message-Id and makes the Message-ID, so each event's mail can
	// be counted, and a rare resend recognised, on the receiving side.
	MessageID string
}

// SMTPSender sends mail through one SMTP server, plain (no TLS, no AUTH),
// as a relay on loopback or the fake provider speaks it. It keeps one SMTP
// session open and sends mail after mail on it: a session per mail (connect,
// greeting, EHLO, QUIT) cost the service and the server more CPU than the
// mail itself. Sends are serialised on the session, which is no limit: the
// provider's rate limit is far below what one session carries. It is safe
// for concurrent use; Close ends the session.
type SMTPSender struct {
	addr     string
	from     string // the From header, "Name <address>" allowed
	envelope string // the bare address, for MAIL FROM
	domain   string // the right-hand side of Message-ID

	commandTimeout, submissionTimeout time.Duration
	idleTimeout                       time.Duration
	trace                             io.Writer // the SMTP conversation, for tests; nil for none

	// slot is the mutex over the session: a channel, so that a Send
	// waiting for it can give up when its ctx ends. It guards the fields
	// below.
	slot     chan struct{}
	client   *smtp.Client // nil when no session is open
	conn     net.Conn     // client's connection
	lastUsed time.Time
	idle     *time.Timer // ends the session once idle; nil until the first one
	closed   bool
}

// These bound a conversation whose ctx has no deadline; go-smtp's defaults
// (5 and 12 minutes) would let a stuck server hold a consumer for long.
const (
	commandTimeout    = 30 * time.Second
	submissionTimeout = time.Minute
)

// idleTimeout is how long a session may sit unused before the sender quits
// it: below the 30 s the fake provider (and many servers) wait before
// hanging up themselves, so a busy server is not held open by a quiet
// sender, and the sender rarely finds its session dropped under it.
const idleTimeout = 20 * time.Second

// quitTimeout bounds QUIT, which has no ctx: Close at shutdown and the idle
// timer should not wait a full command timeout on a server that is gone.
const quitTimeout = 5 * time.Second

// errSenderClosed is what Send returns after Close.
var errSenderClosed = errors.New("smtp sender closed")

// NewSMTPSender returns a sender through the server at addr, from the
// address from ("orders@example.com" or "Dabba <orders@example.com>"). It
// connects on the first Send.
func NewSMTPSender(addr, from string) (*SMTPSender, error) {
	a, err := mail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("sender address %q: %w", from, err)
	}
	domain := a.Address[strings.LastIndexByte(a.Address, '@')+1:]
	return &SMTPSender{addr: addr, from: headerAddress(a), envelope: a.Address, domain: domain,
		commandTimeout: commandTimeout, submissionTimeout: submissionTimeout, idleTimeout: idleTimeout,
		slot: make(chan struct{}, 1)}, nil
}

// headerAddress writes a for a header, bare when it has no name: mail.Address
// would write "<eater@example.com>".
func headerAddress(a *mail.Address) string {
	if a.Name == "" {
		return a.Address
	}
	return a.String()
}

// Send delivers m before ctx ends. An error wrapping ErrRejected is
// permanent; any other (a 4xx reply, a network failure, ctx done) is
// transient. A transient failure after the server took the message (the
// connection lost while waiting for its final reply) leads to a resend,
// which is what X-Dabba-Message-Id is for.
//
// Send reuses the open session, or opens one. A session that fails (a
// network error, a timeout, a 421 reply, ctx ending) is closed and the next
// Send opens another. Send itself tries a second time only when a reused
// session fails before the server accepted MAIL FROM: the server had hung
// up on an idle connection, and nothing of the mail can have reached it.
// Any later failure is left to the caller's retry, since past DATA the
// server may have taken the message.
func (s *SMTPSender) Send(ctx context.Context, m Mail) error {
	rcpt, msg, err := s.compose(m, time.Now())
	if err != nil {
		return fmt.Errorf("compose mail: %w: %w", ErrRejected, err)
	}
	select {
	case s.slot <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("wait for the smtp session: %w", context.Cause(ctx))
	}
	defer func() { <-s.slot }()
	if s.closed {
		return fmt.Errorf("send mail: %w", errSenderClosed)
	}
	// A ctx already done would close the session at once through
	// context.AfterFunc, for nothing.
	if ctx.Err() != nil {
		return fmt.Errorf("send mail: %w", context.Cause(ctx))
	}
	reused := s.client != nil
	mailAccepted, err := s.transact(ctx, rcpt, msg)
	if err != nil && reused && !mailAccepted && lostSession(err) && ctx.Err() == nil {
		_, err = s.transact(ctx, rcpt, msg)
	}
	if s.client != nil {
		s.lastUsed = time.Now()
		if s.idle == nil {
			s.idle = time.AfterFunc(s.idleTimeout, s.closeIdle)
		} else {
			s.idle.Reset(s.idleTimeout)
		}
	}
	if err != nil {
		return classify(ctx, err)
	}
	return nil
}

// transact sends one mail on the session, opening one if there is none.
// mailAccepted reports whether the server accepted MAIL FROM, past which a
// failure may not be retried blindly. On failure it leaves either no
// session or a reset one. The caller holds slot.
func (s *SMTPSender) transact(ctx context.Context, rcpt string, msg []byte) (mailAccepted bool, err error) {
	fresh := s.client == nil
	if fresh {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", s.addr)
		if err != nil {
			return false, fmt.Errorf("connect to smtp server %s: %w", s.addr, err)
		}
		s.conn, s.client = conn, smtp.NewClient(conn)
		s.client.CommandTimeout, s.client.SubmissionTimeout = s.commandTimeout, s.submissionTimeout
		if s.trace != nil {
			s.client.DebugWriter = s.trace
		}
	}
	c, conn := s.client, s.conn
	// go-smtp sets and clears the connection's deadline around every
	// command, so a deadline set here would not last; closing the
	// connection when ctx ends interrupts whatever it is waiting for.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		if !stop() && s.conn == conn {
			// ctx ended and closed the connection, maybe just after
			// the server's last reply: the session is gone either way.
			s.drop(false)
		}
	}()
	defer func() {
		if err == nil {
			return
		}
		// A refusal leaves the session usable once RSET clears what the
		// transaction left (a sender, recipients); anything else leaves
		// it in an unknown state. After a success there is nothing to
		// reset: the reply to DATA ends the transaction (RFC 5321,
		// 4.1.1.4), and go-smtp would send EHLO again after RSET.
		if lostSession(err) || c.Reset() != nil {
			s.drop(false)
		}
	}()
	if fresh {
		// Greeting and EHLO, sent by go-smtp before the first command
		// otherwise, here so that their failure is not taken for a
		// refused MAIL FROM.
		if err := c.Hello("localhost"); err != nil {
			return false, err
		}
	}
	var opts *smtp.MailOptions
	if !isASCII(s.envelope) || !isASCII(rcpt) {
		opts = &smtp.MailOptions{UTF8: true}
	}
	if err := c.Mail(s.envelope, opts); err != nil {
		return false, err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return true, err
	}
	w, err := c.Data()
	if err != nil {
		return true, err
	}
	if _, err := w.Write(msg); err != nil {
		return true, err
	}
	return true, w.Close()
}

// lostSession reports whether err ends the session: anything but an SMTP
// reply (a network error, a timeout, the connection closed when ctx ended),
// or a 421, with which the server says it is closing the connection.
func lostSession(err error) bool {
	var serr *smtp.SMTPError
	return !errors.As(err, &serr) || serr.Code == 421
}

// drop ends the session, with QUIT when quit is set, and returns QUIT's
// error. The caller holds slot.
func (s *SMTPSender) drop(quit bool) error {
	if s.client == nil {
		return nil
	}
	c := s.client
	s.client, s.conn = nil, nil
	var err error
	if quit {
		c.CommandTimeout = quitTimeout
		if err = c.Quit(); err != nil {
			err = fmt.Errorf("quit smtp session: %w", err)
		}
	}
	_ = c.Close() // after a successful QUIT, closed already
	return err
}

// closeIdle quits a session unused for the idle timeout. It runs on the
// idle timer.
func (s *SMTPSender) closeIdle() {
	select {
	case s.slot <- struct{}{}:
	default:
		return // a Send has the session, and arms the timer again when done
	}
	defer func() { <-s.slot }()
	if s.client != nil && time.Since(s.lastUsed) >= s.idleTimeout {
		_ = s.drop(true) // nothing to do about a failed QUIT on an idle session
	}
}

// Close quits the session, if one is open, waiting for a Send in progress
// to finish. Send fails after Close.
func (s *SMTPSender) Close() error {
	s.slot <- struct{}{}
	defer func() { <-s.slot }()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.idle != nil {
		s.idle.Stop()
	}
	return s.drop(true)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// classify wraps a failed conversation's error: ErrRejected for a 5xx
// reply, the context's error when ctx ended it.
func classify(ctx context.Context, err error) error {
	var serr *smtp.SMTPError
	switch {
	case errors.As(err, &serr) && serr.Code >= 500:
		return fmt.Errorf("send mail: %w: %w", ErrRejected, err)
	case errors.As(err, &serr):
		return fmt.Errorf("send mail: %w", err)
	case ctx.Err() != nil:
		return fmt.Errorf("send mail: %w: %w", context.Cause(ctx), err)
	}
	return fmt.Errorf("send mail: %w", err)
}

// compose checks m and renders it as an RFC 5322 message: UTF-8 text,
// quoted-printable so that any line length and character survive any
// relay. It returns the recipient's bare address for RCPT TO.
func (s *SMTPSender) compose(m Mail, now time.Time) (string, []byte, error) {
	if strings.ContainsAny(m.To, "\r\n") {
		return "", nil, errors.New("recipient contains a line break")
	}
	to, err := mail.ParseAddress(m.To)
	if err != nil {
		return "", nil, fmt.Errorf("recipient %q: %w", m.To, err)
	}
	if strings.ContainsAny(m.Subject, "\r\n") {
		return "", nil, errors.New("subject contains a line break")
	}
	if len(m.Subject) > 500 {
		return "", nil, fmt.Errorf("subject is %d bytes, at most 500", len(m.Subject))
	}
	if !validID(m.MessageID) {
		return "", nil, fmt.Errorf("message id %q: want 1 to 128 of A-Z a-z 0-9 . _ - +", m.MessageID)
	}

	var b bytes.Buffer
	header := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	header("From", s.from)
	header("To", headerAddress(to))
	header("Subject", mime.QEncoding.Encode("utf-8", m.Subject))
	header("Date", now.Format(time.RFC1123Z))
	header("Message-ID", "<"+m.MessageID+"@"+s.domain+">")
	header("X-Dabba-Message-Id", m.MessageID)
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	body := m.Body
	if !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	if _, err := qp.Write([]byte(body)); err != nil {
		return "", nil, fmt.Errorf("encode body: %w", err)
	}
	if err := qp.Close(); err != nil {
		return "", nil, fmt.Errorf("encode body: %w", err)
	}
	return to.Address, b.Bytes(), nil
}

// validID accepts ids that need no quoting in Message-ID: event ids are
// UUIDs.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-', r == '+':
		default:
			return false
		}
	}
	return true
}
