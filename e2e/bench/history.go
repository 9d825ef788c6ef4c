package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/dabba/dabba/services/tracking/history"
)

// copyCeiling measures how many rider fixes a second PostgreSQL takes the
// way the tracking history writer writes them, with the writer's own code
// (services/tracking/history): COPY batches of 1,000 rows, each its own
// transaction committed without waiting for the WAL flush (synchronous_commit
// off, as the writer does), from two connections at once, into a table
// shaped like rider_fixes with its index, for sz.Ceiling. Its rows are of
// 10,000 riders, as a city's arrive.
func (b *bench) copyCeiling(ctx context.Context) error {
	table := fmt.Sprintf("bench_fixes_%d", os.Getpid())
	if _, err := b.db.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (LIKE rider_fixes INCLUDING DEFAULTS);
		CREATE INDEX ON %s (order_id, seq)`, table, table)); err != nil {
		return err
	}
	defer b.db.Exec(context.Background(), "DROP TABLE "+table)
	const batch, riders, writers = 1000, 10_000, 2
	orders, ids := make([]uuid.UUID, riders), make([]string, riders)
	for i := range orders {
		orders[i], ids[i] = uuid.New(), riderID(i)
	}
	var rows atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	deadline := start.Add(b.sz.Ceiling)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rs := make([]history.Row, batch)
			for n := 0; time.Now().Before(deadline); n++ {
				at := time.Now()
				for i := range rs {
					r := (w*batch + n*batch + i) % riders
					rs[i] = history.Row{OrderID: orders[r], RiderID: ids[r], Seq: int64(n*batch + i), At: at, TS: at,
						Lat: 19.02 + float64(i)*1e-5, Lng: 72.84, Heading: 90, Speed: 20}
				}
				err := pgx.BeginFunc(ctx, b.db, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit TO off"); err != nil {
						return err
					}
					_, err := history.Copy(ctx, tx.Conn().PgConn(), table, rs)
					return err
				})
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				rows.Add(batch)
			}
		})
	}
	wg.Wait()
	b.r.Locations.CopyCeilingRowsPerS = float64(rows.Load()) / time.Since(start).Seconds()
	return firstErr
}
