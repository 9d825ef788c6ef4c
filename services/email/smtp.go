package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/mail"
	"time"

	"github.com/emersion/go-smtp"
)

// ErrRejected means the mail server refused the message for good (a 5xx
// reply): retrying will not help, so the consumer dead-letters it.
var ErrRejected = errors.New("mail rejected by the SMTP server")

// Mail is one e-mail to send.
type Mail struct {
	To        string
	Subject   string
	Body      string
	MessageID string // the event's id, sent as X-Dabba-Message-Id
}

// SMTPSender sends mail through one SMTP server, plain (no TLS), as the
// local relay or the fake provider speaks it.
type SMTPSender struct {
	addr     string
	from     string // the From header, "Name <address>" allowed
	envelope string // the bare address, for MAIL FROM
}

// NewSMTPSender returns a sender through the server at addr, from the
// address from ("orders@example.com" or "Dabba <orders@example.com>").
func NewSMTPSender(addr, from string) (*SMTPSender, error) {
	a, err := mail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("sender address %q: %w", from, err)
	}
	return &SMTPSender{addr: addr, from: a.String(), envelope: a.Address}, nil
}

// Send delivers m, within ctx's deadline. A 5xx reply wraps ErrRejected;
// anything else that fails is transient.
func (s *SMTPSender) Send(ctx context.Context, m Mail) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("connect to SMTP server: %w", err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.SendMail(s.envelope, []string{m.To}, bytes.NewReader(s.render(m))); err != nil {
		var serr *smtp.SMTPError
		if errors.As(err, &serr) && serr.Code >= 500 {
			return fmt.Errorf("%w: %v", ErrRejected, err)
		}
		return fmt.Errorf("send mail: %w", err)
	}
	return c.Quit()
}

func (s *SMTPSender) render(m Mail) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\n", s.from)
	fmt.Fprintf(&b, "To: %s\r\n", m.To)
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", m.Subject))
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s@dabba>\r\n", m.MessageID)
	fmt.Fprintf(&b, "X-Dabba-Message-Id: %s\r\n", m.MessageID)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	b.WriteString(m.Body)
	b.WriteString("\r\n")
	return b.Bytes()
}
