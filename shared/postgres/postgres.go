// Package postgres opens Dabba's database, applies its migrations and holds
// the transaction and inbox helpers every service uses.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/dabba/dabba/migrations"
)

// DefaultURL is the database used when DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/dabba?sslmode=disable"

// Open connects a pool to url and checks that the database answers. Queries
// fail fast (ConnectTimeout) while the server is down, so callers can answer
// 503 rather than hang.
func Open(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	}
	cfg.HealthCheckPeriod = 5 * time.Second
	// pgxpool's default, four connections on this machine, leaves requests
	// queueing for a connection while PostgreSQL idles between round trips.
	// Eight serve a consumer's workers and the short transactions of
	// batches; the seven processes of a stack then hold at most 56 (plus
	// the orders API's extra, see services/orders) of PostgreSQL's default
	// 100. pool_max_conns in the URL still wins.
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = 8
	}
	// pgx prepares every statement once per connection; PostgreSQL then
	// plans it anew at each execution while it weighs a custom plan against
	// the generic one, and keeps doing so for statements whose generic plan
	// looks dearer on paper. Planning was an eighth of the server's CPU
	// under load. Our statements are short look-ups and set-based writes
	// by key, for which the generic plan is the plan. (It holds for every
	// statement, unnamed ones too: a query whose best plan depends on its
	// values goes with them in its text, pgx.QueryExecModeSimpleProtocol.)
	if _, set := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return pool, nil
}

// WithParam returns url with the connection parameter key set to value
// (pool_max_conns, application_name, …), unless url sets it already.
func WithParam(url, key, value string) string {
	if strings.Contains(url, key+"=") {
		return url
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + key + "=" + value
}

// EnsureDatabase creates url's database when it does not exist, connecting
// to the server's "postgres" database to do so.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parse database URL: %w", err)
	}
	name := cfg.Database
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to server: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	// Created meanwhile by another service: 42P04, or, when the two
	// CREATE DATABASE commands race, a unique violation on the catalog.
	if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505" && pgErr.ConstraintName == "pg_database_datname_index") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Migrate applies the embedded migrations. Goose takes a session lock, so
// services starting together apply them once.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	return migrate(ctx, db)
}

func migrate(ctx context.Context, db *sql.DB) error {
	// Services start together and each migrates: the lock is retried
	// every second (goose's default is every 5), for up to 5 minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return fmt.Errorf("migration lock: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithSessionLocker(locker),
		// Services own number ranges (tracking 1xx), so a lower number may land later.
		goose.WithAllowOutofOrder(true))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	// Looking takes no lock, so services starting on a migrated database
	// do not queue for it one after another.
	pending, err := provider.HasPending(ctx)
	if err != nil {
		return fmt.Errorf("check migrations: %w", err)
	}
	if !pending {
		return nil
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// InTx runs fn in a transaction, committing if it returns nil.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, fn)
}

// InBatchedTx runs a transaction that reads, then writes, in two round trips
// where InTx spends one more on BEGIN and one on COMMIT. The first batch is
// BEGIN followed by the statements read queues; write reads their results in
// order from res and queues the statements to commit on b; the second batch
// is those statements followed by COMMIT.
//
// An error from write, or from any statement, rolls the transaction back and
// is returned. So does a decision to write nothing that must not commit:
// write returns a sentinel error of its own, and the caller maps it back.
// The connection never goes back to the pool inside a transaction: if the
// ROLLBACK fails, the connection is closed.
func InBatchedTx(ctx context.Context, pool *pgxpool.Pool, read func(b *pgx.Batch), write func(res pgx.BatchResults, b *pgx.Batch) error) (err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	defer func() {
		if err != nil {
			rollback(ctx, conn.Conn())
		}
	}()
	var first pgx.Batch
	first.Queue("BEGIN")
	read(&first)
	res := conn.SendBatch(ctx, &first)
	if _, err := res.Exec(); err != nil {
		_ = res.Close()
		return fmt.Errorf("begin: %w", err)
	}
	var last pgx.Batch
	err = write(res, &last)
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	last.Queue("COMMIT")
	return conn.SendBatch(ctx, &last).Close()
}

// SendTx runs b's statements as one transaction in one round trip: BEGIN,
// them and COMMIT go in one batch. read gets their results in order, after
// the server has already run the COMMIT, so it cannot veto it: a statement
// that fails is what rolls the transaction back (the server skips the rest
// of the batch, COMMIT included). A statement may be SET LOCAL, which then
// holds for this transaction only. read may be nil.
func SendTx(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch, read func(res pgx.BatchResults) error) (err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	defer func() {
		if err != nil {
			rollback(ctx, conn.Conn())
		}
	}()
	tx := pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, b.Len()+2)}
	tx.Queue("BEGIN")
	tx.QueuedQueries = append(tx.QueuedQueries, b.QueuedQueries...)
	tx.Queue("COMMIT")
	res := conn.SendBatch(ctx, &tx)
	if _, err := res.Exec(); err != nil {
		_ = res.Close()
		return fmt.Errorf("begin: %w", err)
	}
	if read != nil {
		err = read(res)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	return err
}

// rollback ends the transaction a failed InBatchedTx or SendTx left open on
// conn, so the connection can go back to the pool. ctx may be what failed
// (a request's deadline): the ROLLBACK gets a moment of its own rather than
// costing the pool a connection. If it fails, the connection is closed;
// pgxpool would destroy one released inside a transaction anyway (its
// Conn.Release checks TxStatus), closing it says so outright.
func rollback(ctx context.Context, conn *pgx.Conn) {
	if conn.IsClosed() || conn.PgConn().TxStatus() == 'I' {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if _, err := conn.Exec(rctx, "ROLLBACK"); err != nil || conn.PgConn().TxStatus() != 'I' {
		_ = conn.Close(rctx)
	}
}

// The inbox (processed_messages) is claimed in one round trip, with
// statements a consumer queues on one batch: LockKeys, then
// QueueUnprocessed (read with ReadUnprocessed). The consumer applies the
// effects of the new messages only, records them with QueueRecordProcessed
// in the same transaction, and commits. The locks make a concurrent
// transaction claiming one of the same keys wait for this one, then find
// what this one recorded.
//
// A claim writes nothing, so the transaction has no transaction id while
// the consumer does its slow outside work (a charge, an e-mail) before
// writing: an open transaction with one would hold back every reader of
// the outbox in commit order (outbox.Read) until it ended.

// LockKeys queues on b the advisory locks of keys for consumer (message
// ids, or an ordered consumer's order ids), held to the end of the
// transaction and taken in one order, so that two batches never deadlock.
func LockKeys(b *pgx.Batch, consumer string, keys []string) {
	b.Queue(`SELECT pg_advisory_xact_lock(k) FROM (
		SELECT DISTINCT hashtextextended($1 || ' ' || key, 0) AS k FROM unnest($2::text[]) AS key ORDER BY k) AS locks`, consumer, keys)
}

// QueueUnprocessed queues on b the read of which of ids consumer has not
// processed; ReadUnprocessed reads its answer. Queued after the locks, as a
// statement of its own, its snapshot is taken once they are held and sees
// what their previous holders committed.
func QueueUnprocessed(b *pgx.Batch, consumer string, ids []string) {
	b.Queue(`SELECT id FROM unnest($2::text[]) AS id
		WHERE NOT EXISTS (SELECT 1 FROM processed_messages p WHERE p.consumer = $1 AND p.message_id = id)`, consumer, ids)
}

// ReadUnprocessed reads the answer of QueueUnprocessed: the ids not
// processed yet.
func ReadUnprocessed(res pgx.BatchResults, n int) (map[string]bool, error) {
	rows, err := res.Query()
	if err != nil {
		return nil, fmt.Errorf("read inbox: %w", err)
	}
	fresh := make(map[string]bool, n)
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { fresh[id] = true; return nil }); err != nil {
		return nil, fmt.Errorf("read inbox: %w", err)
	}
	return fresh, nil
}

// QueueRecordProcessed queues on b the record in the inbox that consumer
// has processed the messages ids (claimed in the same transaction, whose
// effects it writes), one statement; nothing for no ids.
func QueueRecordProcessed(b *pgx.Batch, consumer string, ids []string) {
	if len(ids) == 0 {
		return
	}
	b.Queue(`INSERT INTO processed_messages (consumer, message_id)
		SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, consumer, ids)
}

// SweepBatch is how many rows a sweep deletes in one statement.
const SweepBatch = 5000

// Sweep runs del, a DELETE of at most SweepBatch rows, again and again until
// one deletes fewer, and returns how many rows went. A sweep of a large
// backlog is then many short transactions, each holding few row locks,
// never one long one that blocks the hot path or bloats the WAL at once.
// del's statement receives SweepBatch as its first parameter.
func Sweep(ctx context.Context, db *pgxpool.Pool, del string, args ...any) (int64, error) {
	var total int64
	for {
		tag, err := db.Exec(ctx, del, append([]any{SweepBatch}, args...)...)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < SweepBatch {
			return total, nil
		}
	}
}

// SweepInbox deletes the inbox records of consumer older than olderThan.
// A message processed longer ago is no longer recognised if it comes
// again; consumers refuse messages that old (shared/consumer).
func SweepInbox(ctx context.Context, db *pgxpool.Pool, consumer string, olderThan time.Duration) (int64, error) {
	n, err := Sweep(ctx, db, `DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(
		SELECT ctid FROM processed_messages WHERE processed_at < now() - $3 * interval '1 millisecond' AND consumer = $2 LIMIT $1))`,
		consumer, olderThan.Milliseconds())
	if err != nil {
		return n, fmt.Errorf("sweep inbox of %s: %w", consumer, err)
	}
	return n, nil
}

// IsUnavailable reports whether err means the database could not be reached
// (as opposed to a query it rejected), so an API can answer 503.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08: connection exception; 57P: operator intervention
		// (shutdown, crash recovery).
		return len(pgErr.Code) == 5 && (pgErr.Code[:2] == "08" || pgErr.Code[:3] == "57P")
	}
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) || pgconn.SafeToRetry(err) || errors.Is(err, context.DeadlineExceeded)
}
