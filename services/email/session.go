package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// session is one SMTP connection, speaking the part of RFC 5321 a sender
// needs. When the server offers pipelining (RFC 2920) and chunking (RFC
// 3030), a batch of mails goes out as one write (each mail's MAIL, RCPT and
// BDAT LAST with its message, an RSET between mails) and costs one
// exchange, where MAIL, RCPT, DATA and the message cost four round trips a
// mail. Without them it falls back to one command at a time. go-smtp's
// client, used before, has neither; its server, the fake provider, has
// both, and so do the providers' relays.
type session struct {
	conn net.Conn
	r    *textproto.Reader
	w    *bufio.Writer
	// batching: the server offers PIPELINING and CHUNKING; utf8: SMTPUTF8.
	batching, utf8 bool

	commandTimeout, submissionTimeout time.Duration
}

// dialSession connects to addr and says EHLO; trace, if not nil, gets the
// conversation both ways.
func dialSession(ctx context.Context, addr string, commandTimeout, submissionTimeout time.Duration, trace io.Writer) (*session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to smtp server %s: %w", addr, err)
	}
	var rw io.ReadWriter = conn
	if trace != nil {
		rw = tracedConn{conn, trace}
	}
	s := &session{conn: conn, r: textproto.NewReader(bufio.NewReader(rw)), w: bufio.NewWriter(rw),
		commandTimeout: commandTimeout, submissionTimeout: submissionTimeout}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := s.reply(s.commandTimeout, 2); err != nil {
		conn.Close()
		return nil, fmt.Errorf("smtp greeting: %w", err)
	}
	ext, err := s.cmd(2, "EHLO localhost")
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("smtp EHLO: %w", err)
	}
	offered := map[string]bool{}
	for _, line := range strings.Split(ext, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			offered[strings.ToUpper(f[0])] = true
		}
	}
	s.batching, s.utf8 = offered["PIPELINING"] && offered["CHUNKING"], offered["SMTPUTF8"]
	return s, nil
}

// tracedConn copies what goes through a connection to a trace (tests).
type tracedConn struct {
	net.Conn
	trace io.Writer
}

func (c tracedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	_, _ = c.trace.Write(p[:n])
	return n, err
}

func (c tracedConn) Write(p []byte) (int, error) {
	_, _ = c.trace.Write(p)
	return c.Conn.Write(p)
}

// reply reads one reply and checks its class (2 for 2xx, 3 for 3xx): a
// reply of another class is an *smtp.SMTPError.
func (s *session) reply(timeout time.Duration, class int) (string, error) {
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	code, msg, err := s.r.ReadResponse(0)
	if err != nil {
		return "", err
	}
	if code/100 != class {
		return "", &smtp.SMTPError{Code: code, Message: msg}
	}
	return msg, nil
}

// flush writes what is buffered.
func (s *session) flush() error {
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.commandTimeout)); err != nil {
		return err
	}
	return s.w.Flush()
}

// cmd sends one command and reads its reply.
func (s *session) cmd(class int, format string, args ...any) (string, error) {
	fmt.Fprintf(s.w, format+"\r\n", args...)
	if err := s.flush(); err != nil {
		return "", err
	}
	return s.reply(s.commandTimeout, class)
}

// mailFrom is the MAIL command for a mail from from to rcpt.
func (s *session) mailFrom(from, rcpt string) (string, error) {
	if !isASCII(from) || !isASCII(rcpt) {
		if !s.utf8 {
			return "", fmt.Errorf("%w: the server takes no UTF-8 addresses (SMTPUTF8)", ErrRejected)
		}
		return "MAIL FROM:<" + from + "> SMTPUTF8", nil
	}
	return "MAIL FROM:<" + from + ">", nil
}

// sendAll sends each of msgs from from to its rcpt, and returns each one's
// outcome (nil: the server took it). replied reports whether the server
// answered anything at all; a session that failed with no answer was gone
// before the mails were sent (a server that hung up on an idle session),
// and sending them again on a new one cannot repeat any. When the session
// is lost partway (live false), the mails without a final reply get that
// error: the server may have taken them.
func (s *session) sendAll(from string, rcpts []string, msgs [][]byte) (errs []error, replied, live bool) {
	errs = make([]error, len(msgs))
	mails := make([]string, len(msgs))
	for i := range msgs {
		mails[i], errs[i] = s.mailFrom(from, rcpts[i])
	}
	if !s.batching {
		for i := range msgs {
			if errs[i] != nil {
				continue
			}
			var answered bool
			errs[i], answered = s.sendOne(mails[i], rcpts[i], msgs[i])
			replied = replied || answered
			if errs[i] != nil && lostSession(errs[i]) {
				fill(errs[i+1:], errs[i])
				return errs, replied, false
			}
		}
		return errs, replied, s.resetAfter(errs)
	}
	written := 0
	for i := range msgs {
		if errs[i] != nil {
			continue
		}
		if written > 0 {
			// The mail before may have been refused and left a sender
			// behind; a next MAIL would then be refused as nested.
			s.w.WriteString("RSET\r\n")
		}
		written++
		fmt.Fprintf(s.w, "%s\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n", mails[i], rcpts[i], len(msgs[i]))
		s.w.Write(msgs[i])
	}
	if written == 0 {
		return errs, false, true
	}
	if err := s.flush(); err != nil {
		fill(errs, err)
		return errs, false, false
	}
	read := 0
	for i := range msgs {
		if errs[i] != nil {
			continue
		}
		timeouts := []time.Duration{s.commandTimeout, s.commandTimeout, s.submissionTimeout} // MAIL, RCPT, BDAT
		if read > 0 {
			timeouts = append([]time.Duration{s.commandTimeout}, timeouts...) // the RSET before them
		}
		read++
		for n, timeout := range timeouts {
			_, err := s.reply(timeout, 2)
			if err != nil && lostSession(err) {
				fill(errs[i:], err)
				return errs, replied, false
			}
			replied = true
			if n >= len(timeouts)-3 && errs[i] == nil {
				errs[i] = err // the first refusal of the mail's own says why
			}
		}
	}
	return errs, replied, s.resetAfter(errs)
}

// sendOne sends one mail a command at a time: MAIL, RCPT, DATA, the
// message. answered says the server replied to MAIL.
func (s *session) sendOne(mail, rcpt string, msg []byte) (err error, answered bool) {
	if _, err := s.cmd(2, "%s", mail); err != nil {
		var serr *smtp.SMTPError
		return err, errors.As(err, &serr)
	}
	if _, err := s.cmd(2, "RCPT TO:<%s>", rcpt); err != nil {
		return err, true
	}
	if _, err := s.cmd(3, "DATA"); err != nil {
		return err, true
	}
	dw := textproto.NewWriter(s.w).DotWriter()
	if _, err := dw.Write(msg); err != nil {
		return err, true
	}
	if err := dw.Close(); err != nil {
		return err, true
	}
	if err := s.flush(); err != nil {
		return err, true
	}
	_, err = s.reply(s.submissionTimeout, 2)
	return err, true
}

// resetAfter clears what a refused last mail left in the transaction (a
// sender, recipients) with RSET, so the session can be used again; after a
// success there is nothing to reset. It reports whether the session lives.
func (s *session) resetAfter(errs []error) bool {
	if len(errs) == 0 || errs[len(errs)-1] == nil {
		return true
	}
	_, err := s.cmd(2, "RSET")
	return err == nil
}

// quit says QUIT and closes the connection.
func (s *session) quit(timeout time.Duration) error {
	s.commandTimeout = timeout
	_, err := s.cmd(2, "QUIT")
	s.conn.Close()
	return err
}

func fill(errs []error, err error) {
	for i := range errs {
		if errs[i] == nil {
			errs[i] = err
		}
	}
}

// lostSession reports whether err ends the session: anything but an SMTP
// reply (a network error, a timeout, the connection closed when ctx ended),
// or a 421, with which the server says it is closing the connection.
func lostSession(err error) bool {
	var serr *smtp.SMTPError
	return !errors.As(err, &serr) || serr.Code == 421
}
