package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/services/tracking/history"
)

// The history writer's bounds.
const (
	// historyBatch and historyWait bound a batch: a COPY carries at most
	// this many rows, and a row waits at most historyWait for its batch.
	historyBatch = 1000
	historyWait  = time.Second
	// historyWriters COPY at once, each on a connection of the pool: one
	// batch being committed does not hold up the next.
	historyWriters = 2
	// historyBacklog bounds the rows waiting to be written (about five
	// seconds of a city's fixes, 10 MiB). Past it the writer sheds rows,
	// counted, rather than make anyone wait or hold more memory: the
	// history is worth less than the live map.
	historyBacklog = 100_000
	// historyTries is how often a batch is tried before it is shed.
	historyTries = 3
	// historyAhead is how many days' partitions exist ahead of today.
	historyAhead = 2
	// historyMaintainEvery is how often partitions are created and dropped.
	historyMaintainEvery = time.Hour
)

// HistoryStats counts what the writer did with rows.
type HistoryStats struct {
	Written atomic.Int64 // committed
	Shed    atomic.Int64 // dropped: backlog full, or a batch that kept failing
	Batches atomic.Int64 // COPYs committed
	Failed  atomic.Int64 // COPYs that failed (their rows tried again, or shed)
}

// History writes the path travelled: every fix of a rider on a delivery,
// in batches (COPY, at most historyBatch rows or historyWait old), into
// rider_fixes, partitioned by day, keeping TRACKING_HISTORY_DAYS of them.
// Add never blocks and never fails: the live path hands it a row and goes
// on. Past historyBacklog rows waiting, it sheds.
type History struct {
	db   *pgxpool.Pool
	days int
	log  *zap.Logger
	warn rate.Sometimes

	Stats HistoryStats

	mu      sync.Mutex
	rows    []history.Row
	oldest  time.Time     // when the oldest row in rows was added
	full    chan struct{} // capacity 1: a batch is ready
	missing chan struct{} // capacity 1: a COPY found no partition for its rows
}

// NewHistory returns a writer to db keeping days of history.
func NewHistory(db *pgxpool.Pool, days int, log *zap.Logger) *History {
	return &History{db: db, days: days, log: log.With(zap.String("component", "history")), warn: rate.Sometimes{Interval: 10 * time.Second},
		full: make(chan struct{}, 1), missing: make(chan struct{}, 1)}
}

// Add queues row for writing, or sheds it when the backlog is full.
func (h *History) Add(row history.Row) {
	h.mu.Lock()
	if len(h.rows) >= historyBacklog {
		h.mu.Unlock()
		h.Stats.Shed.Add(1)
		return
	}
	if len(h.rows) == 0 {
		h.oldest = time.Now()
	}
	h.rows = append(h.rows, row)
	ready := len(h.rows) == historyBatch
	h.mu.Unlock()
	if ready {
		h.signal()
	}
}

func (h *History) signal() {
	select {
	case h.full <- struct{}{}:
	default:
	}
}

// Backlog returns how many rows wait to be written.
func (h *History) Backlog() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.rows)
}

// take removes and returns a batch once one is due: historyBatch rows, or
// rows of which the oldest has waited historyWait (any, when flush is set).
// It returns how long until a batch is due when none is.
func (h *History) take(now time.Time, flush bool) ([]history.Row, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.rows) == 0 {
		return nil, historyWait
	}
	if wait := historyWait - now.Sub(h.oldest); len(h.rows) < historyBatch && wait > 0 && !flush {
		return nil, wait
	}
	n := min(len(h.rows), historyBatch)
	batch := make([]history.Row, n)
	copy(batch, h.rows)
	h.rows = append(h.rows[:0], h.rows[n:]...)
	h.oldest = now // the rows left came after the batch, at most historyWait ago: close enough
	if len(h.rows) >= historyBatch {
		h.signal()
	}
	return batch, 0
}

// Run keeps the partitions and writes batches until ctx is done, then
// writes what is left (for up to five seconds).
func (h *History) Run(ctx context.Context) error {
	if err := h.maintain(ctx, time.Now()); err != nil {
		h.log.Warn("history partitions", zap.Error(err))
	}
	var wg sync.WaitGroup
	for range historyWriters {
		wg.Go(func() { h.write(ctx) })
	}
	t := time.NewTicker(historyMaintainEvery)
	defer t.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
		case <-h.missing:
		}
		if !done {
			if err := h.maintain(ctx, time.Now()); err != nil {
				h.log.Warn("history partitions", zap.Error(err))
			}
		}
	}
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for {
		batch, _ := h.take(time.Now(), true)
		if batch == nil || fctx.Err() != nil {
			break
		}
		h.copy(fctx, batch)
	}
	if n := h.Backlog(); n > 0 {
		h.Stats.Shed.Add(int64(n))
	}
	return nil
}

// write writes batches as they fall due until ctx is done.
func (h *History) write(ctx context.Context) {
	for {
		batch, wait := h.take(time.Now(), false)
		if batch != nil {
			h.copy(ctx, batch)
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-h.full:
		case <-t.C:
		}
		t.Stop()
	}
}

// copy writes one batch, trying it historyTries times before shedding it.
func (h *History) copy(ctx context.Context, batch []history.Row) {
	var err error
	for try := 1; try <= historyTries && ctx.Err() == nil; try++ {
		if err = h.copyOnce(ctx, batch); err == nil {
			h.Stats.Written.Add(int64(len(batch)))
			h.Stats.Batches.Add(1)
			return
		}
		h.Stats.Failed.Add(1)
		if isNoPartition(err) {
			select {
			case h.missing <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(try) * 200 * time.Millisecond):
		}
	}
	h.Stats.Shed.Add(int64(len(batch)))
	h.warn.Do(func() { h.log.Warn("history batch shed", zap.Int("rows", len(batch)), zap.Error(err)) })
}

// copyOnce COPYs batch in a transaction of its own. It commits without
// waiting for the WAL flush: a crash of the database may lose the last
// fraction of a second of history, which no one would miss, and the
// writer's commits do not queue behind the order path's flushes.
func (h *History) copyOnce(ctx context.Context, batch []history.Row) error {
	return pgx.BeginFunc(ctx, h.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit TO off"); err != nil {
			return err
		}
		if _, err := history.Copy(ctx, tx.Conn().PgConn(), "rider_fixes", batch); err != nil {
			return fmt.Errorf("copy %d history rows: %w", len(batch), err)
		}
		return nil
	})
}

// isNoPartition reports whether err says a row fell outside every
// partition (23514: no partition of relation found for row).
func isNoPartition(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23514"
}

// partitionName is the partition of rider_fixes holding day (UTC).
func partitionName(day time.Time) string { return "rider_fixes_" + day.UTC().Format("20060102") }

var partitionPattern = regexp.MustCompile(`^rider_fixes_(\d{8})$`)

// historyLock serialises partition maintenance between instances ("rider_fx").
const historyLock = 0x72696465725f6678

// maintain creates the partitions from yesterday to historyAhead days
// ahead of now, and drops those whose day ended more than h.days days ago.
// Several instances may run it at once; an advisory lock takes them in
// turn. A drop waits at most 5 s for its lock (a long path query), and is
// tried again the next hour.
func (h *History) maintain(ctx context.Context, now time.Time) error {
	today := now.UTC().Truncate(24 * time.Hour)
	return pgx.BeginFunc(ctx, h.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(historyLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout TO '5s'"); err != nil {
			return err
		}
		for d := -1; d <= historyAhead; d++ {
			day := today.AddDate(0, 0, d)
			if day.Before(today.AddDate(0, 0, -h.days)) {
				continue // already expired: never create what retention drops
			}
			sql := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF rider_fixes FOR VALUES FROM ('%s') TO ('%s')",
				pgx.Identifier{partitionName(day)}.Sanitize(), day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("create partition %s: %w", partitionName(day), err)
			}
		}
		names, err := partitions(ctx, tx)
		if err != nil {
			return err
		}
		for _, name := range names {
			m := partitionPattern.FindStringSubmatch(name)
			if m == nil {
				continue // not one of ours: leave it
			}
			day, err := time.Parse("20060102", m[1])
			if err != nil || !day.Before(today.AddDate(0, 0, -h.days)) {
				continue
			}
			if _, err := tx.Exec(ctx, "DROP TABLE "+pgx.Identifier{name}.Sanitize()); err != nil {
				return fmt.Errorf("drop expired partition %s: %w", name, err)
			}
			h.log.Info("expired history partition dropped", zap.String("partition", name))
		}
		return nil
	})
}

// partitions returns the names of rider_fixes' partitions.
func partitions(ctx context.Context, q pgx.Tx) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'rider_fixes'::regclass ORDER BY c.relname`)
	if err != nil {
		return nil, fmt.Errorf("list history partitions: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
