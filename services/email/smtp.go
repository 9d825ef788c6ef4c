package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"time"

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
// as a relay on loopback or the fake provider speaks it. It opens a
// connection per mail: the send rate is a few a minute.
type SMTPSender struct {
	addr     string
	from     string // the From header, "Name <address>" allowed
	envelope string // the bare address, for MAIL FROM
	domain   string // the right-hand side of Message-ID

	commandTimeout, submissionTimeout time.Duration
}

// These bound a conversation whose ctx has no deadline; go-smtp's defaults
// (5 and 12 minutes) would let a stuck server hold a consumer for long.
const (
	commandTimeout    = 30 * time.Second
	submissionTimeout = time.Minute
)

// NewSMTPSender returns a sender through the server at addr, from the
// address from ("orders@example.com" or "Dabba <orders@example.com>").
func NewSMTPSender(addr, from string) (*SMTPSender, error) {
	a, err := mail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("sender address %q: %w", from, err)
	}
	domain := a.Address[strings.LastIndexByte(a.Address, '@')+1:]
	return &SMTPSender{addr: addr, from: headerAddress(a), envelope: a.Address, domain: domain,
		commandTimeout: commandTimeout, submissionTimeout: submissionTimeout}, nil
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
func (s *SMTPSender) Send(ctx context.Context, m Mail) error {
	rcpt, msg, err := s.compose(m, time.Now())
	if err != nil {
		return fmt.Errorf("compose mail: %w: %w", ErrRejected, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("connect to smtp server %s: %w", s.addr, err)
	}
	// go-smtp sets and clears the connection's deadline around every
	// command, so a deadline set here would not last; closing the
	// connection when ctx ends interrupts whatever it is waiting for.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = s.commandTimeout, s.submissionTimeout
	if err := c.SendMail(s.envelope, []string{rcpt}, bytes.NewReader(msg)); err != nil {
		return classify(ctx, err)
	}
	// The server took the message with its reply to DATA; a failed QUIT
	// changes nothing about that.
	_ = c.Quit()
	return nil
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
