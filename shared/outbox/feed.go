package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// The outbox is also a log that projections in the same database read in
// commit order, with no broker in between: a table that only copies what
// the outbox already says (an order's status after its payment, what a
// tracking page shows) needs no durable queue, no delivery and no inbox
// row per event. Read reads it; Projection applies it exactly once.

// Position is a place in the outbox's commit order: the transaction that
// wrote a row and the row's id. The zero Position is before every row.
type Position struct {
	Tx int64
	ID int64
}

// Before reports whether p comes before q.
func (p Position) Before(q Position) bool {
	return p.Tx < q.Tx || p.Tx == q.Tx && p.ID < q.ID
}

// Entry is one event of the outbox as a reader sees it.
type Entry struct {
	Position    Position
	Event       events.Envelope
	Payload     []byte // the event as written: the envelope's JSON
	TraceParent string // "" when the row has none
	// Seq numbers the order's events (1 for its first) and Prior lists the
	// routing keys of those before this one; Seq is 0 for a row written
	// with ordering off (migrations/012_order_sequence.sql).
	Seq   int
	Prior []string
	// Err is why the row's payload is not an event (it never is, unless
	// something other than Rows wrote it); Event is then zero.
	Err error
}

// readSQL returns, in commit order, the rows after a position whose
// transactions have all ended: those older than the oldest transaction
// still running (pg_snapshot_xmin). Every such transaction has committed or
// aborted, so no row can become visible later behind the position a read
// reached. The first column is that bound; the LEFT JOIN returns it even
// when no row qualifies.
const readSQL = `WITH h AS (SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint AS xmin)
	SELECT h.xmin, o.tx, o.id, o.payload, o.traceparent, o.seq, o.prior
	FROM h LEFT JOIN LATERAL (
		SELECT tx, id, payload, traceparent, seq, prior FROM outbox
		WHERE (tx, id) > ($1, $2) AND tx < h.xmin AND (cardinality($3::text[]) = 0 OR routing_key = ANY($3))
		ORDER BY tx, id LIMIT $4) o ON true`

// Querier is a pool, a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Read returns up to limit events written after from, in commit order, of
// the routing keys given (every key when keys is empty), and the position
// to read from next. next never goes backwards and moves past rows of
// other keys too, so a reader does not scan them again.
func Read(ctx context.Context, db Querier, from Position, keys []string, limit int) (entries []Entry, next Position, err error) {
	if keys == nil {
		keys = []string{}
	}
	rows, err := db.Query(ctx, readSQL, from.Tx, from.ID, keys, limit)
	if err != nil {
		return nil, from, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var xmin int64
	for rows.Next() {
		var tx, id pgtype.Int8
		var payload []byte
		var tp pgtype.Text
		var seq pgtype.Int4
		var prior []string
		if err := rows.Scan(&xmin, &tx, &id, &payload, &tp, &seq, &prior); err != nil {
			return nil, from, fmt.Errorf("read outbox: %w", err)
		}
		if !id.Valid {
			continue // nothing after from yet
		}
		e := Entry{Position: Position{Tx: tx.Int64, ID: id.Int64}, Payload: payload, TraceParent: tp.String,
			Seq: int(seq.Int32), Prior: prior}
		e.Event, e.Err = events.Decode(payload)
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, from, fmt.Errorf("read outbox: %w", err)
	}
	next = from
	switch {
	case len(entries) == limit:
		// More may follow the last one returned.
		next = entries[len(entries)-1].Position
	case from.Before(Position{Tx: xmin}):
		// Every row of an ended transaction was read or skipped.
		next = Position{Tx: xmin}
	}
	return entries, next, nil
}

// Head returns the position a new reader that wants only what is written
// from now on starts from.
func Head(ctx context.Context, db Querier) (Position, error) {
	var xmin int64
	if err := db.QueryRow(ctx, "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint").Scan(&xmin); err != nil {
		return Position{}, fmt.Errorf("outbox head: %w", err)
	}
	return Position{Tx: xmin}, nil
}

// Projection keeps a table of this database in step with the outbox: it
// reads the events of its Keys in commit order and applies each batch in
// the transaction that moves its position (outbox_readers) on, so every
// event is applied exactly once, across restarts and with any number of
// instances running it. It starts from the oldest row the outbox still
// holds, and the outbox sweep keeps every row a projection has not passed.
type Projection struct {
	// Name identifies the projection's position in outbox_readers.
	Name string
	// Keys are the routing keys it reads.
	Keys []string
	// Apply queues on b the statements that apply batch, in commit order;
	// they run with the position's update in one transaction and their
	// results are not read. An entry whose Err is set never reaches it.
	Apply func(b *pgx.Batch, batch []Entry) error
	// Batch bounds the events applied in one transaction (default 500).
	Batch int
	// Poll is how long it waits when it has caught up (default 50 ms).
	Poll time.Duration
}

// errMoved means another instance applied what this one read: the position
// stored is not the one the read started from.
var errMoved = errors.New("another instance moved the projection on")

// Run applies the outbox to the projection until ctx is done, waiting Poll
// between reads that find nothing new and backing off after errors.
func (p Projection) Run(ctx context.Context, db *pgxpool.Pool, log *zap.Logger) error {
	log = log.With(zap.String("projection", p.Name))
	st := projectionState{p: p.withDefaults(), db: db, log: log}
	backoff := st.p.Poll
	for {
		busy, err := st.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := st.p.Poll
		switch {
		case err != nil:
			log.Warn("apply the outbox; will retry", zap.Error(err), zap.Duration("in", backoff))
			wait, backoff = backoff, min(2*backoff, 5*time.Second)
		case busy:
			backoff = st.p.Poll
			continue
		default:
			backoff = st.p.Poll
		}
		if !sleep(ctx, wait, nil) {
			return nil
		}
	}
}

func (p Projection) withDefaults() Projection {
	if p.Batch <= 0 {
		p.Batch = 500
	}
	if p.Poll <= 0 {
		p.Poll = 50 * time.Millisecond
	}
	return p
}

// projectionState is a running projection's view of its position.
type projectionState struct {
	p   Projection
	db  *pgxpool.Pool
	log *zap.Logger
	// loaded says saved and at are known; saved is the position stored in
	// outbox_readers, at how far this instance has read (past saved when
	// only rows of other keys followed).
	loaded    bool
	saved, at Position
}

// step reads once and applies what it found; busy says a full batch was
// read, so more may be waiting.
func (s *projectionState) step(ctx context.Context) (busy bool, err error) {
	if !s.loaded {
		if err := s.load(ctx); err != nil {
			return false, err
		}
	}
	entries, next, err := Read(ctx, s.db, s.at, s.p.Keys, s.p.Batch)
	if err != nil {
		return false, err
	}
	if len(entries) == 0 {
		s.at = next
		return false, nil
	}
	good := entries[:0:0]
	for _, e := range entries {
		if e.Err != nil {
			s.log.Error("outbox row is not an event; skipped", zap.Int64("outbox_id", e.Position.ID), zap.Error(e.Err))
			continue
		}
		good = append(good, e)
	}
	err = postgres.InBatchedTx(ctx, s.db, func(b *pgx.Batch) {
		b.Queue("SELECT tx, id FROM outbox_readers WHERE name = $1 FOR UPDATE", s.p.Name)
	}, func(res pgx.BatchResults, b *pgx.Batch) error {
		var stored Position
		if err := res.QueryRow().Scan(&stored.Tx, &stored.ID); err != nil {
			return fmt.Errorf("lock projection position: %w", err)
		}
		if stored != s.saved {
			return errMoved
		}
		if len(good) > 0 {
			if err := s.p.Apply(b, good); err != nil {
				return err
			}
		}
		b.Queue("UPDATE outbox_readers SET tx = $2, id = $3, updated_at = now() WHERE name = $1", s.p.Name, next.Tx, next.ID)
		return nil
	})
	if errors.Is(err, errMoved) {
		s.loaded = false // read from where the other instance got to
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("apply %d events: %w", len(good), err)
	}
	s.saved, s.at = next, next
	return len(entries) == s.p.Batch, nil
}

// load reads the stored position.
func (s *projectionState) load(ctx context.Context) error {
	pos, err := loadPosition(ctx, s.db, s.p.Name)
	if err != nil {
		return err
	}
	s.saved, s.at, s.loaded = pos, pos, true
	return nil
}

// loadPosition reads the position of the reader name, creating it at the
// start of the outbox for a reader that has none.
func loadPosition(ctx context.Context, db Querier, name string) (Position, error) {
	var pos Position
	err := db.QueryRow(ctx, `WITH ins AS (
			INSERT INTO outbox_readers (name, tx, id) VALUES ($1, 0, 0) ON CONFLICT (name) DO NOTHING RETURNING tx, id)
		SELECT tx, id FROM ins UNION ALL SELECT tx, id FROM outbox_readers WHERE name = $1`, name).Scan(&pos.Tx, &pos.ID)
	if err != nil {
		return pos, fmt.Errorf("load the position of %s: %w", name, err)
	}
	return pos, nil
}

// savePosition stores the position of the reader name, never moving it
// back.
func savePosition(ctx context.Context, db Querier, name string, pos Position) error {
	_, err := db.Exec(ctx, `UPDATE outbox_readers SET tx = $2, id = $3, updated_at = now() WHERE name = $1 AND (tx, id) < ($2, $3)`,
		name, pos.Tx, pos.ID)
	if err != nil {
		return fmt.Errorf("store the position of %s: %w", name, err)
	}
	return nil
}

// Sweep deletes the rows written more than olderThan ago that every reader
// (the relay, each Projection) has passed: a reader that stopped for a
// while finds what it has not read yet still there. The old rows are found
// through outbox_age_idx, and go in batches.
func Sweep(ctx context.Context, db *pgxpool.Pool, olderThan time.Duration) (int64, error) {
	n, err := postgres.Sweep(ctx, db, `DELETE FROM outbox WHERE id = ANY(ARRAY(
		SELECT o.id FROM outbox o, (SELECT tx, id FROM outbox_readers ORDER BY tx, id LIMIT 1) r
		WHERE o.created_at < now() - $2 * interval '1 millisecond' AND (o.tx, o.id) <= (r.tx, r.id) LIMIT $1))`,
		olderThan.Milliseconds())
	if err != nil {
		return n, fmt.Errorf("sweep outbox: %w", err)
	}
	return n, nil
}
