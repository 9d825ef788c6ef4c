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

func TestMarkProcessed(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	id := uuid.NewString()
	for i, want := range []bool{true, false} {
		var first bool
		err := InTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			first, err = MarkProcessed(ctx, tx, "test", id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if first != want {
			t.Fatalf("call %d: first = %v, want %v", i, first, want)
		}
	}
}

func TestMarkProcessedRolledBack(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	id := uuid.NewString()
	_ = InTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := MarkProcessed(ctx, tx, "test", id); err != nil {
			t.Fatal(err)
		}
		return context.Canceled // the effect failed: the inbox row must go too
	})
	err := InTx(ctx, pool, func(tx pgx.Tx) error {
		first, err := MarkProcessed(ctx, tx, "test", id)
		if !first {
			t.Error("a rolled-back inbox row still counts as processed")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestMigrateTwice(t *testing.T) {
	pool := MustPool(t)
	if err := Migrate(context.Background(), pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
}

func TestProcessed(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	id := uuid.NewString()
	if done, err := Processed(ctx, pool, "test", id); err != nil || done {
		t.Fatalf("before: done %v, err %v", done, err)
	}
	if err := InTx(ctx, pool, func(tx pgx.Tx) error { _, err := MarkProcessed(ctx, tx, "test", id); return err }); err != nil {
		t.Fatal(err)
	}
	if done, err := Processed(ctx, pool, "test", id); err != nil || !done {
		t.Fatalf("after: done %v, err %v", done, err)
	}
}
