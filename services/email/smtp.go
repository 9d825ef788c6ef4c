package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"slices"
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
// session open and sends mail after mail on it, a batch of mails at a time
// (session: pipelined, one exchange a batch, where the server allows): a
// session per mail (connect, greeting, EHLO, QUIT) cost the service and
// the server more CPU than the mail itself. Sends are serialised on the
// session, which is no limit: the provider's rate limit is far below what
// one session carries. It is safe for concurrent use; Close ends the
// session.
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
	sess     *session // nil when no session is open
	lastUsed time.Time
	idle     *time.Timer // ends the session once idle; nil until the first one
	closed   bool
}

// These bound a conversation whose ctx has no deadline, so that a stuck
// server cannot hold a consumer for long: a command's reply, and the reply
// to a message.
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

// Send delivers m before ctx ends: SendAll of one mail.
func (s *SMTPSender) Send(ctx context.Context, m Mail) error {
	return s.SendAll(ctx, []Mail{m})[0]
}

// SendAll delivers ms before ctx ends, and returns each one's outcome: nil
// when the server took it, an error wrapping ErrRejected when it never will
// (a 5xx reply, a mail unfit to send), any other error when it failed for
// now (a 4xx reply, a network failure, ctx done). A transient failure after
// the server may have taken a mail (the connection lost while waiting for
// its reply) leads to a resend, which is what X-Dabba-Message-Id is for.
//
// SendAll reuses the open session, or opens one. A session that fails (a
// network error, a timeout, a 421 reply, ctx ending) is closed and the next
// SendAll opens another. SendAll itself tries a second time only when a
// reused session failed before the server answered anything: the server
// had hung up on an idle connection, and nothing of the mails can have
// reached it. Any later failure is left to the caller's retry.
func (s *SMTPSender) SendAll(ctx context.Context, ms []Mail) []error {
	errs := make([]error, len(ms))
	var rcpts []string
	var msgs [][]byte
	var index []int // of ms, for each mail composed
	now := time.Now()
	for i, m := range ms {
		rcpt, msg, err := s.compose(m, now)
		if err != nil {
			errs[i] = fmt.Errorf("compose mail: %w: %w", ErrRejected, err)
			continue
		}
		rcpts, msgs, index = append(rcpts, rcpt), append(msgs, msg), append(index, i)
	}
	if len(msgs) == 0 {
		return errs
	}
	sent := func(err error) []error {
		for _, i := range index {
			errs[i] = err
		}
		return errs
	}
	select {
	case s.slot <- struct{}{}:
	case <-ctx.Done():
		return sent(fmt.Errorf("wait for the smtp session: %w", context.Cause(ctx)))
	}
	defer func() { <-s.slot }()
	if s.closed {
		return sent(fmt.Errorf("send mail: %w", errSenderClosed))
	}
	// A ctx already done would close the session at once through
	// context.AfterFunc, for nothing.
	if ctx.Err() != nil {
		return sent(fmt.Errorf("send mail: %w", context.Cause(ctx)))
	}
	reused := s.sess != nil
	out, replied := s.exchange(ctx, rcpts, msgs)
	if reused && !replied && ctx.Err() == nil && slices.ContainsFunc(out, func(err error) bool { return err != nil && lostSession(err) }) {
		out, _ = s.exchange(ctx, rcpts, msgs)
	}
	if s.sess != nil {
		s.lastUsed = time.Now()
		if s.idle == nil {
			s.idle = time.AfterFunc(s.idleTimeout, s.closeIdle)
		} else {
			s.idle.Reset(s.idleTimeout)
		}
	}
	for n, i := range index {
		if out[n] != nil {
			errs[i] = classify(ctx, out[n])
		}
	}
	return errs
}

// exchange sends the mails on the session, opening one if there is none,
// and returns each one's outcome; replied says the server answered
// anything. It leaves either no session or one ready for the next mails.
// The caller holds slot.
func (s *SMTPSender) exchange(ctx context.Context, rcpts []string, msgs [][]byte) (errs []error, replied bool) {
	if s.sess == nil {
		sess, err := dialSession(ctx, s.addr, s.commandTimeout, s.submissionTimeout, s.trace)
		if err != nil {
			errs = make([]error, len(msgs))
			fill(errs, err)
			return errs, false
		}
		s.sess = sess
	}
	sess := s.sess
	// Replies wait with deadlines of their own; closing the connection
	// when ctx ends interrupts whatever the session is waiting for.
	stop := context.AfterFunc(ctx, func() { sess.conn.Close() })
	errs, replied, live := sess.sendAll(s.envelope, rcpts, msgs)
	if !stop() || !live {
		// ctx ended and closed the connection, maybe just after the
		// server's last reply: the session is gone either way.
		s.drop(false)
	}
	return errs, replied
}

// drop ends the session, with QUIT when quit is set, and returns QUIT's
// error. The caller holds slot.
func (s *SMTPSender) drop(quit bool) error {
	if s.sess == nil {
		return nil
	}
	sess := s.sess
	s.sess = nil
	if quit {
		if err := sess.quit(quitTimeout); err != nil {
			return fmt.Errorf("quit smtp session: %w", err)
		}
		return nil
	}
	return sess.conn.Close()
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
	if s.sess != nil && time.Since(s.lastUsed) >= s.idleTimeout {
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
