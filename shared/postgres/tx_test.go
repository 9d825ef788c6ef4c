package postgres

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// mustOneConnPool returns a pool of one connection that fails the test if
// it ever hands out a connection inside a transaction, so each test sees
// whether its connection was kept (same backend pid) or replaced.
func mustOneConnPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	MustPool(tb) // creates and migrates the database
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = DefaultURL
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 1
	cfg.PrepareConn = func(_ context.Context, c *pgx.Conn) (bool, error) {
		if s := c.PgConn().TxStatus(); s != 'I' {
			tb.Errorf("pool handed out a connection with transaction status %q", s)
		}
		return true, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func backendPID(tb testing.TB, pool *pgxpool.Pool) int {
	tb.Helper()
	var pid int
	if err := pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		tb.Fatal(err)
	}
	return pid
}

func processed(tb testing.TB, pool *pgxpool.Pool, id string) bool {
	tb.Helper()
	var done bool
	err := pool.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM processed_messages WHERE consumer = 'test' AND message_id = $1)",
		id).Scan(&done)
	if err != nil {
		tb.Fatal(err)
	}
	return done
}

const insertProcessed = "INSERT INTO processed_messages (consumer, message_id) VALUES ('test', $1)"

// TestPoolDestroysConnReleasedInTx pins down the pgxpool behaviour that
// InBatchedTx and SendTx fall back on: a connection released inside a
// transaction is destroyed, never handed to the next caller.
func TestPoolDestroysConnReleasedInTx(t *testing.T) {
	pool := mustOneConnPool(t)
	ctx := context.Background()
	before := backendPID(t, pool)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	if backendPID(t, pool) == before {
		t.Fatal("the pool kept a connection released inside a transaction")
	}
}

func TestInBatchedTx(t *testing.T) {
	ctx := context.Background()
	errStop := errors.New("stop")

	t.Run("OK", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		id := uuid.NewString()
		err := InBatchedTx(ctx, pool, func(b *pgx.Batch) {
			b.Queue("SELECT count(*) FROM processed_messages WHERE consumer = 'test' AND message_id = $1", id)
		}, func(res pgx.BatchResults, b *pgx.Batch) error {
			var n int
			if err := res.QueryRow().Scan(&n); err != nil {
				return err
			}
			if n != 0 {
				t.Errorf("count = %d before the insert", n)
			}
			b.Queue(insertProcessed, id)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !processed(t, pool, id) {
			t.Fatal("the transaction did not commit")
		}
		if backendPID(t, pool) != pid {
			t.Fatal("the connection was replaced after a commit")
		}
	})

	t.Run("ErrFromWriteRollsBack", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		id := uuid.NewString()
		err := InBatchedTx(ctx, pool, func(b *pgx.Batch) {
			b.Queue(insertProcessed, id) // a write in the first batch must go too
		}, func(res pgx.BatchResults, b *pgx.Batch) error {
			b.Queue(insertProcessed, uuid.NewString())
			return errStop
		})
		if !errors.Is(err, errStop) {
			t.Fatalf("err = %v, want errStop", err)
		}
		if processed(t, pool, id) {
			t.Fatal("the first batch's insert was committed")
		}
		if backendPID(t, pool) != pid {
			t.Fatal("the connection was replaced after a clean rollback")
		}
	})

	t.Run("ErrInFirstBatch", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		err := InBatchedTx(ctx, pool, func(b *pgx.Batch) {
			b.Queue("SELECT 1/0")
		}, func(res pgx.BatchResults, b *pgx.Batch) error {
			var n int
			return res.QueryRow().Scan(&n)
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Fatalf("err = %v, want division by zero", err)
		}
		if backendPID(t, pool) != pid {
			t.Fatal("the connection was replaced after a clean rollback")
		}
	})

	t.Run("ErrInLastBatchRollsBack", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		id := uuid.NewString()
		err := InBatchedTx(ctx, pool, func(b *pgx.Batch) {
			b.Queue(insertProcessed, id)
		}, func(res pgx.BatchResults, b *pgx.Batch) error {
			b.Queue(insertProcessed, id) // a duplicate key: COMMIT never runs
			return nil
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("err = %v, want a unique violation", err)
		}
		if processed(t, pool, id) {
			t.Fatal("a failed transaction was committed")
		}
		if backendPID(t, pool) != pid {
			t.Fatal("the connection was replaced after a clean rollback")
		}
	})

	t.Run("BrokenConnIsNotReused", func(t *testing.T) {
		pool := mustOneConnPool(t)
		killer := MustPool(t)
		id := uuid.NewString()
		var pid int
		err := InBatchedTx(ctx, pool, func(b *pgx.Batch) {
			b.Queue("SELECT pg_backend_pid()")
			b.Queue(insertProcessed, id)
		}, func(res pgx.BatchResults, b *pgx.Batch) error {
			if err := res.QueryRow().Scan(&pid); err != nil {
				return err
			}
			// The server goes away mid-transaction: the ROLLBACK fails.
			if _, err := killer.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
				t.Fatal(err)
			}
			return errStop
		})
		if !errors.Is(err, errStop) {
			t.Fatalf("err = %v, want errStop", err)
		}
		if processed(t, pool, id) {
			t.Fatal("the insert was committed")
		}
		if backendPID(t, pool) == pid {
			t.Fatal("the pool kept a connection whose rollback failed")
		}
	})
}

func TestSendTx(t *testing.T) {
	ctx := context.Background()

	t.Run("OK", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		id := uuid.NewString()
		var b pgx.Batch
		b.Queue("SET LOCAL synchronous_commit TO off")
		b.Queue(insertProcessed, id)
		b.Queue("SELECT current_setting('synchronous_commit')")
		var setting string
		err := SendTx(ctx, pool, &b, func(res pgx.BatchResults) error {
			if _, err := res.Exec(); err != nil {
				return err
			}
			if _, err := res.Exec(); err != nil {
				return err
			}
			return res.QueryRow().Scan(&setting)
		})
		if err != nil {
			t.Fatal(err)
		}
		if setting != "off" || !processed(t, pool, id) {
			t.Fatalf("setting %q inside, committed %v", setting, processed(t, pool, id))
		}
		var after string
		if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&after); err != nil {
			t.Fatal(err)
		}
		if after != "on" || backendPID(t, pool) != pid {
			t.Fatalf("after the transaction: synchronous_commit %q, same connection %v", after, backendPID(t, pool) == pid)
		}
	})

	t.Run("ErrRollsBack", func(t *testing.T) {
		pool := mustOneConnPool(t)
		pid := backendPID(t, pool)
		id := uuid.NewString()
		var b pgx.Batch
		b.Queue(insertProcessed, id)
		b.Queue("SELECT 1/0")
		err := SendTx(ctx, pool, &b, nil)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Fatalf("err = %v, want division by zero", err)
		}
		if processed(t, pool, id) {
			t.Fatal("a failed transaction was committed")
		}
		if backendPID(t, pool) != pid {
			t.Fatal("the connection was replaced after a clean rollback")
		}
	})
}
