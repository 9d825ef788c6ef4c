package postgres

import (
	"context"
	"os"
	"testing"
	"time"

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

// claim claims ids in the inbox of consumer "test" inside tx, as a
// consumer does (LockKeys, QueueUnprocessed), and returns those new.
func claim(ctx context.Context, tx pgx.Tx, ids []string) (map[string]bool, error) {
	var b pgx.Batch
	LockKeys(&b, "test", ids)
	QueueUnprocessed(&b, "test", ids)
	res := tx.SendBatch(ctx, &b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return nil, err
	}
	fresh, err := ReadUnprocessed(res, len(ids))
	if err != nil {
		return nil, err
	}
	return fresh, res.Close()
}

// record records ids in the inbox of consumer "test" inside tx.
func record(ctx context.Context, tx pgx.Tx, ids []string) error {
	var b pgx.Batch
	QueueRecordProcessed(&b, "test", ids)
	return tx.SendBatch(ctx, &b).Close()
}

// process claims ids for consumer "test" in a transaction of its own,
// records those it found new unless rollback, and returns them.
func process(t *testing.T, pool *pgxpool.Pool, rollback bool, ids ...string) map[string]bool {
	t.Helper()
	ctx := context.Background()
	var fresh map[string]bool
	err := InTx(ctx, pool, func(tx pgx.Tx) error {
		var err error
		if fresh, err = claim(ctx, tx, ids); err != nil {
			return err
		}
		var done []string
		for id := range fresh {
			done = append(done, id)
		}
		if err := record(ctx, tx, done); err != nil {
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

func TestInbox(t *testing.T) {
	pool := MustPool(t)
	a, b := uuid.NewString(), uuid.NewString()
	if got := process(t, pool, false, a); !got[a] || len(got) != 1 {
		t.Fatalf("first: %v", got)
	}
	if got := process(t, pool, false, a, b, b); got[a] || !got[b] || len(got) != 1 {
		t.Fatalf("second: %v, want only %s new", got, b)
	}
}

func TestInboxRolledBack(t *testing.T) {
	pool := MustPool(t)
	id := uuid.NewString()
	process(t, pool, true, id) // the effect failed: the inbox row must go too
	if got := process(t, pool, false, id); !got[id] {
		t.Error("a rolled-back inbox row still counts as processed")
	}
}

// TestInboxClaimWaits: a second claim of an id waits for the first
// transaction, and then finds it processed; the claim itself gives the
// transaction no transaction id.
func TestInboxClaimWaits(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	id := uuid.NewString()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if fresh, err := claim(ctx, tx, []string{id}); err != nil || !fresh[id] {
		t.Fatalf("claim: %v, %v", fresh, err)
	}
	var xid *string
	if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id_if_assigned()::text").Scan(&xid); err != nil || xid != nil {
		t.Fatalf("the claim gave the transaction id %v (%v); want none", xid, err)
	}
	second := make(chan map[string]bool)
	go func() {
		var fresh map[string]bool
		_ = InTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			fresh, err = claim(ctx, tx, []string{id})
			return err
		})
		second <- fresh
	}()
	select {
	case got := <-second:
		t.Fatalf("the second claim did not wait: %v", got)
	case <-time.After(200 * time.Millisecond):
	}
	if err := record(ctx, tx, []string{id}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := <-second; got[id] {
		t.Fatal("the second claim found the id new after the first recorded it")
	}
}

func TestMigrateTwice(t *testing.T) {
	pool := MustPool(t)
	if err := Migrate(context.Background(), pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
}

func TestWithParam(t *testing.T) {
	tests := []struct{ give, want string }{
		{"postgres://h/db", "postgres://h/db?pool_max_conns=16"},
		{"postgres://h/db?sslmode=disable", "postgres://h/db?sslmode=disable&pool_max_conns=16"},
		{"postgres://h/db?pool_max_conns=4", "postgres://h/db?pool_max_conns=4"},
	}
	for _, tt := range tests {
		if got := WithParam(tt.give, "pool_max_conns", "16"); got != tt.want {
			t.Errorf("WithParam(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

func TestValues(t *testing.T) {
	tests := []struct {
		row      string
		width, n int
		want     string
	}{
		{"($1, $2, now())", 2, 3, "($1, $2, now()), ($3, $4, now()), ($5, $6, now())"},
		{"($1, $2, $2)", 2, 2, "($1, $2, $2), ($3, $4, $4)"},
		{"($1, 201, $10, $2)", 10, 2, "($1, 201, $10, $2), ($11, 201, $20, $12)"},
		{"($1)", 1, 1, "($1)"},
	}
	for _, tt := range tests {
		if got := Values(tt.row, tt.width, tt.n); got != tt.want {
			t.Errorf("Values(%q, %d, %d) = %q, want %q", tt.row, tt.width, tt.n, got, tt.want)
		}
	}
}

// TestSweepInbox deletes a consumer's records older than the retention,
// more than one batch of them, and keeps the newer ones and other
// consumers'.
func TestSweepInbox(t *testing.T) {
	pool := MustPool(t)
	ctx := context.Background()
	me, other := "sweep-"+uuid.NewString()[:8], "sweep-"+uuid.NewString()[:8]
	_, err := pool.Exec(ctx, `INSERT INTO processed_messages (consumer, message_id, processed_at)
		SELECT c, gen_random_uuid()::text, now() - CASE WHEN g <= $3 THEN interval '8 days' ELSE interval '1 day' END
		FROM unnest(ARRAY[$1, $2]) c, generate_series(1, $3 + 10) g`, me, other, SweepBatch+100)
	if err != nil {
		t.Fatal(err)
	}
	n, err := SweepInbox(ctx, pool, me, 7*24*time.Hour)
	if err != nil || n != SweepBatch+100 {
		t.Fatalf("swept %d (%v), want %d", n, err, SweepBatch+100)
	}
	var mine, theirs int
	if err := pool.QueryRow(ctx, "SELECT count(*) FILTER (WHERE consumer = $1), count(*) FILTER (WHERE consumer = $2) FROM processed_messages WHERE consumer IN ($1, $2)",
		me, other).Scan(&mine, &theirs); err != nil {
		t.Fatal(err)
	}
	if mine != 10 || theirs != SweepBatch+110 {
		t.Fatalf("left %d of mine and %d of the other's, want 10 and %d", mine, theirs, SweepBatch+110)
	}
	_, _ = pool.Exec(ctx, "DELETE FROM processed_messages WHERE consumer IN ($1, $2)", me, other)
}
