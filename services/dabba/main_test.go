package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

// TestUsageErrors: every malformed command line is a usage error (exit
// status 2), found before anything dials the broker (the broker URL here
// leads nowhere).
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		give []string
	}{
		{"NoCommand", nil},
		{"UnknownCommand", []string{"frobnicate"}},
		{"NoDLQCommand", []string{"dlq"}},
		{"UnknownDLQCommand", []string{"dlq", "purge", "email"}},
		{"ShowNoQueue", []string{"dlq", "show"}},
		{"ShowUnknownQueue", []string{"dlq", "show", "orders"}},
		{"ShowTwoQueues", []string{"dlq", "show", "email", "payment"}},
		{"ShowBadN", []string{"dlq", "show", "email", "-n", "many"}},
		{"ListWithQueue", []string{"dlq", "list", "email"}},
		{"ReplayNothingChosen", []string{"dlq", "replay", "email"}},
		{"ReplayTwoWays", []string{"dlq", "replay", "email", "--all", "--id", "x"}},
		{"ReplayBadAge", []string{"dlq", "replay", "email", "--older-than", "10 minutes"}},
		{"DiscardNegativeAge", []string{"dlq", "discard", "email", "--older-than", "-1m"}},
		{"UnknownFlag", []string{"dlq", "list", "--jsn"}},
		{"TokenNoKind", []string{"token"}},
		{"TokenNoSubject", []string{"token", "customer"}},
		{"TokenUnknownKind", []string{"token", "admin", "a1"}},
		{"TokenBadRider", []string{"token", "rider", "rider.7"}},
		{"TokenBadOrder", []string{"token", "track", "o1"}},
		{"TokenBadTTL", []string{"token", "customer", "c1", "-ttl", "-1h"}},
	}
	getenv := func(string) string { return "amqp://nobody:nothing@127.0.0.1:1/" }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.give, getenv, &bytes.Buffer{}, io.Discard)
			var u usageError
			if !errors.As(err, &u) {
				t.Fatalf("run(%q) = %v, want a usage error", tt.give, err)
			}
		})
	}
	t.Run("Help", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"help"}, {"dlq", "show", "--help"}} {
			if err := run(context.Background(), args, getenv, &bytes.Buffer{}, io.Discard); !errors.Is(err, flag.ErrHelp) {
				t.Errorf("run(%q) = %v, want help", args, err)
			}
		}
	})
	t.Run("ErrBrokerUnreachable", func(t *testing.T) {
		// Flags after the queue are read too; then the dial fails, with
		// the password hidden.
		err := run(context.Background(), []string{"dlq", "replay", "email.dlq", "--older-than", "10m"}, getenv, &bytes.Buffer{}, io.Discard)
		var u usageError
		if err == nil || errors.As(err, &u) || !bytes.Contains([]byte(err.Error()), []byte("nobody:xxxxx@")) {
			t.Fatalf("run = %v", err)
		}
	})
}

// TestDefinitionsCommand: dabba definitions prints the generated file and
// -o writes it.
func TestDefinitionsCommand(t *testing.T) {
	want, err := broker.DefinitionsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"definitions"}, os.Getenv, &out, io.Discard); err != nil || !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("definitions = %v\n%s", err, out.Bytes())
	}
	file := filepath.Join(t.TempDir(), "defs.json")
	if err := run(context.Background(), []string{"definitions", "-o", file}, os.Getenv, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(file); !bytes.Equal(got, want) {
		t.Fatalf("-o wrote\n%s", got)
	}
}

// TestTokenCommand: dabba token prints one token of the kind asked for,
// signed with TOKEN_SECRET, or with the development secret and a note on
// standard error.
func TestTokenCommand(t *testing.T) {
	const secret = "a-test-secret-of-thirty-two-bytes!"
	for _, kind := range token.Audiences {
		sub := "x-1"
		if kind == token.AudienceTrack {
			sub = "6f1c2a8e-4b7d-4e3a-9c1f-2d5e8a7b3c90"
		}
		var out, errs bytes.Buffer
		getenv := func(k string) string { return map[string]string{"TOKEN_SECRET": secret}[k] }
		if err := run(context.Background(), []string{"token", kind, sub, "-ttl", "1h"}, getenv, &out, &errs); err != nil {
			t.Fatal(err)
		}
		tok := strings.TrimSuffix(out.String(), "\n")
		c, err := token.NewSigner([]byte(secret)).Verify(tok)
		if err != nil || c != (token.Claims{Audience: kind, Subject: sub}) || errs.Len() != 0 || strings.Contains(tok, "\n") {
			t.Fatalf("%s: %q verifies as %+v, %v; stderr %q", kind, out.String(), c, err, errs.String())
		}
	}
	var out, errs bytes.Buffer
	if err := run(context.Background(), []string{"token", "customer", "c1"}, func(string) string { return "" }, &out, &errs); err != nil {
		t.Fatal(err)
	}
	if _, err := token.NewSigner([]byte(token.DevSecret)).Verify(strings.TrimSpace(out.String())); err != nil || !strings.Contains(errs.String(), "development secret") {
		t.Fatalf("without TOKEN_SECRET: %v; stderr %q", err, errs.String())
	}
}

// MustShow runs args (a dabba dlq show) until its standard output has
// each of ids, and returns it and standard error. Whoever else looks at
// the DLQ meanwhile holds its messages for a moment (dlq.Show takes them
// all), so one look may miss some.
func MustShow(tb testing.TB, args []string, getenv func(string) string, ids ...string) (stdout, stderr string) {
	tb.Helper()
	testenv.Eventually(tb, 20*time.Second, "dead messages "+strings.Join(ids, ", "), func() bool {
		var out, errs bytes.Buffer
		if err := run(context.Background(), args, getenv, &out, &errs); err != nil {
			tb.Fatalf("run(%q) = %v", args, err)
		}
		stdout, stderr = out.String(), errs.String()
		for _, id := range ids {
			if !strings.Contains(stdout, id) {
				return false
			}
		}
		return true
	})
	return stdout, stderr
}

// shown returns what dabba dlq show printed of message id: its block, from
// its "--- N. message" line to the next.
func shown(out, id string) string {
	_, block, ok := strings.Cut(out, ". message "+id+"\n")
	if !ok {
		return ""
	}
	block, _, _ = strings.Cut(block, "\n--- ")
	return block
}

// TestDLQShowWaiting: dabba dlq show prints under each dead message the
// events of its order that its queue holds back behind it, and --json has
// them as the admin API does; without the database, it shows the messages
// alone and says so on standard error.
func TestDLQShowWaiting(t *testing.T) {
	db, dbURL := testenv.MustOwnSchemaURL(t)
	conn := testenv.MustBroker(t)
	queue := broker.QueueRestaurant
	order, other := uuid.NewString(), uuid.NewString()
	dead := testenv.MustDeadLetter(t, conn, queue, order, events.OrderPlaced, 1)
	alone := testenv.MustDeadLetter(t, conn, queue, other, events.OrderPlaced, 1)
	paid := testenv.MustHold(t, db, queue, order, events.OrderPaid, 2, 1, 3*time.Minute+12*time.Second)
	testenv.MustHold(t, db, queue, order, events.OrderCancelled, 3, 2, time.Minute)
	testenv.MustHold(t, db, broker.QueueEmail, other, events.OrderPaid, 2, 1, time.Minute) // another queue's
	env := func(db string) func(string) string {
		return testenv.Getenv(map[string]string{"DATABASE_URL": db})
	}

	t.Run("OK", func(t *testing.T) {
		out, errs := MustShow(t, []string{"dlq", "show", queue, "-n", "0"}, env(dbURL), dead, alone)
		if errs != "" {
			t.Fatalf("stderr %q", errs)
		}
		block := shown(out, dead)
		want := regexp.MustCompile(`(?m)^  waiting behind it: order\.paid #2 \(held 3m1[2-9]s\)\n  waiting behind it: order\.cancelled #3 \(held 1m[0-9]+s\)\n`)
		if !want.MatchString(block) || !strings.Contains(block, order) {
			t.Fatalf("message %s shown as\n%s", dead, block)
		}
		if block := shown(out, alone); block == "" || strings.Contains(block, "waiting behind it") {
			t.Fatalf("message %s shown as\n%s", alone, block)
		}
	})

	t.Run("JSON", func(t *testing.T) {
		out, errs := MustShow(t, []string{"dlq", "show", queue, "-n", "0", "--json"}, env(dbURL), dead, alone)
		if errs != "" {
			t.Fatalf("stderr %q", errs)
		}
		var page struct {
			Queue    string `json:"queue"`
			Total    int    `json:"total"`
			Messages []struct {
				ID      string        `json:"message_id"`
				OrderID string        `json:"order_id"`
				Reason  string        `json:"reason"`
				Waiting []dlq.Waiting `json:"waiting"`
			} `json:"messages"`
		}
		if err := json.Unmarshal([]byte(out), &page); err != nil || page.Queue != broker.DLQ(queue) || page.Total < 2 {
			t.Fatalf("%v: %s", err, out)
		}
		found := 0
		for _, m := range page.Messages {
			switch m.ID {
			case dead:
				found++
				if m.OrderID != order || m.Reason != broker.ReasonExhausted || len(m.Waiting) != 2 ||
					m.Waiting[0].EventID != paid || m.Waiting[0].Type != events.OrderPaid || m.Waiting[0].Seq != 2 || m.Waiting[0].After != 1 ||
					m.Waiting[1].Seq != 3 || m.Waiting[0].HeldSince.IsZero() {
					t.Errorf("message %+v", m)
				}
			case alone:
				found++
				if m.Waiting != nil {
					t.Errorf("message %+v", m)
				}
			}
		}
		if found != 2 || !strings.Contains(out, `"waiting": [`) {
			t.Fatalf("found %d of 2 in %s", found, out)
		}
	})

	t.Run("DatabaseUnreachable", func(t *testing.T) {
		// Nothing listens on port 1.
		out, errs := MustShow(t, []string{"dlq", "show", queue, "-n", "0"}, env("postgres://nobody@127.0.0.1:1/dabba?connect_timeout=1"), dead, alone)
		if shown(out, dead) == "" || strings.Contains(out, "waiting behind it") {
			t.Fatalf("shown:\n%s", out)
		}
		if strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "waiting behind these messages are not shown") {
			t.Fatalf("stderr %q", errs)
		}
	})
}
