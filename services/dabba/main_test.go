package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dabba/dabba/shared/broker"
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
