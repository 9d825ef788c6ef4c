package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/dabba/dabba/services/email/smtpsink"
	"github.com/dabba/dabba/shared/testenv"
)

func send(addr, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail("orders@dabba.local", []string{"eater@example.com"}, strings.NewReader(msg)); err != nil {
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

func TestRun(t *testing.T) {
	smtpAddr, httpAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	env := map[string]string{"SMTP_ADDR": smtpAddr, "HTTP_ADDR": httpAddr, "LOG_LEVEL": "warn"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, io.Discard) }()
	base := "http://" + httpAddr
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fakesmtp not up: %v", err)
		}
	}

	if err := send(smtpAddr, "Subject: hi\r\nX-Dabba-Message-Id: ev-1\r\n\r\nhello\r\n"); err != nil {
		t.Fatal(err)
	}
	code, body := do(t, http.MethodGet, base+"/messages?to=eater@example.com", "")
	var ms []smtpsink.Message
	if code != http.StatusOK || json.Unmarshal([]byte(body), &ms) != nil || len(ms) != 1 || ms[0].DabbaID != "ev-1" {
		t.Fatalf("GET /messages = %d %s, want the one mail", code, body)
	}
	if code, body := do(t, http.MethodPut, base+"/admin/refuse", `{"code": 550}`); code != http.StatusNoContent {
		t.Fatalf("PUT /admin/refuse = %d %s", code, body)
	}
	var serr *smtp.SMTPError
	if err := send(smtpAddr, "Subject: no\r\n\r\nno\r\n"); !errors.As(err, &serr) || serr.Code != 550 {
		t.Fatalf("err = %v, want SMTP 550", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if err := send(smtpAddr, "Subject: late\r\n\r\nlate\r\n"); err == nil {
		t.Fatal("SMTP still accepting after shutdown")
	}
}

func TestRunErrSMTPAddrInUse(t *testing.T) {
	s, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	env := map[string]string{"SMTP_ADDR": s.Addr(), "HTTP_ADDR": testenv.FreeAddr(t), "LOG_LEVEL": "error"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := run(ctx, nil, func(k string) string { return env[k] }, io.Discard); err == nil || ctx.Err() != nil {
		t.Fatalf("run = %v, want a listen error at once", err)
	}
}
