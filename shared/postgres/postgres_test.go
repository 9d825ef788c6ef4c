package postgres

import (
	"context"
	"os"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MustPool opens the test database (DATABASE_URL or DefaultURL), creating
// and migrating it if needed.
func MustPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = DefaultURL
	}
	ctx := context.Background()
	if err := EnsureDatabase(ctx, url); err != nil {
		tb.Fatal(err)
	}
	pool, err := Open(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	if err := Migrate(ctx, pool); err != nil {
		tb.Fatal(err)
	}
	return pool
}

// record runs RecordProcessed in a transaction of its own, committed unless
// rollback, and returns the ids it found new.
func record(t *testing.T, pool *pgxpool.Pool, rollback bool, ids ...string) map[string]bool {
	t.Helper()
	ctx := context.Background()
	var fresh map[string]bool
	err := InTx(ctx, pool, func(tx pgx.Tx) error {
		var err error
		if fresh, err = RecordProcessed(ctx, tx, "test", ids); err != nil {
			return err
		}
		if rollback {
			return context.Canceled
		}
		return nil
	})
	if err != nil && !rollback {
		t.Fatal(err)
	}
	return fresh
}

func TestRecordProcessed(t *testing.T) {
	pool := MustPool(t)
	a, b := uuid.NewString(), uuid.NewString()
	if got := record(t, pool, false, a); !got[a] || len(got) != 1 {
		t.Fatalf("first: %v", got)
	}
	if got := record(t, pool, false, a, b); got[a] || !got[b] || len(got) != 1 {
		t.Fatalf("second: %v, want only %s new", got, b)
	}
}

func TestRecordProcessedRolledBack(t *testing.T) {
	pool := MustPool(t)
	id := uuid.NewString()
	record(t, pool, true, id) // the effect failed: the inbox row must go too
	if got := record(t, pool, false, id); !got[id] {
		t.Error("a rolled-back inbox row still counts as processed")
	}
}

func TestForgetProcessed(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	a, b := uuid.NewString(), uuid.NewString()
	err := InTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := RecordProcessed(ctx, tx, "test", []string{a, b}); err != nil {
			return err
		}
		return ForgetProcessed(ctx, tx, "test", []string{b}) // b's effect failed
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := record(t, pool, false, a, b); got[a] || !got[b] {
		t.Fatalf("after forgetting %s: new %v", b, got)
	}
}

func TestMigrateTwice(t *testing.T) {
	pool := MustPool(t)
	if err := Migrate(context.Background(), pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
}

func TestWithPoolSize(t *testing.T) {
	tests := []struct{ give, want string }{
		{"postgres://h/db", "postgres://h/db?pool_max_conns=16"},
		{"postgres://h/db?sslmode=disable", "postgres://h/db?sslmode=disable&pool_max_conns=16"},
		{"postgres://h/db?pool_max_conns=4", "postgres://h/db?pool_max_conns=4"},
	}
	for _, tt := range tests {
		if got := WithPoolSize(tt.give, "16"); got != tt.want {
			t.Errorf("WithPoolSize(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}
