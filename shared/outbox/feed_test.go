package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// mustBegin starts a transaction that writes one outbox event of key, and
// returns it open with the event's id.
func mustBegin(tb testing.TB, db *pgxpool.Pool, key string) (pgx.Tx, string) {
	tb.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tx.Rollback(ctx) })
	id, err := Enqueue(ctx, tx, key, uuid.NewString(), time.Now(), map[string]string{})
	if err != nil {
		tb.Fatal(err)
	}
	return tx, id
}

func ids(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Event.ID
	}
	return out
}

// TestReadCommitOrder: a row whose transaction is still open holds back
// every row written after it began, even rows committed before it; once it
// commits, both come, in the order their transactions began writing. A
// reader that went by id alone would have read the second and never the
// first.
func TestReadCommitOrder(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	slow, first := mustBegin(t, db, events.OrderPlaced)
	fast, second := mustBegin(t, db, events.OrderPlaced)
	if err := fast.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got, next, err := Read(ctx, db, Position{}, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("read %v while an earlier transaction was open, want nothing yet", ids(got))
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got, next, err = Read(ctx, db, next, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint([]string{first, second}) {
		t.Fatalf("read %v, want %v", ids(got), []string{first, second})
	}
	again, _, err := Read(ctx, db, next, nil, 10)
	if err != nil || len(again) != 0 {
		t.Fatalf("read again from the position returned: %v, %v; want nothing", ids(again), err)
	}
}

// TestReadKeysAndLimit: only the keys asked for come back, a full page
// stops at its last row, and a page with nothing of those keys still
// moves the position past what it skipped.
func TestReadKeysAndLimit(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	var paid []string
	for i := range 6 {
		key := events.OrderPlaced
		if i%2 == 1 {
			key = events.OrderPaid
		}
		tx, id := mustBegin(t, db, key)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if key == events.OrderPaid {
			paid = append(paid, id)
		}
	}
	keys := []string{events.OrderPaid}
	page, next, err := Read(ctx, db, Position{}, keys, 2)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(page)) != fmt.Sprint(paid[:2]) || next != page[1].Position {
		t.Fatalf("first page %v up to %v, want %v up to its last row", ids(page), next, paid[:2])
	}
	page, next, err = Read(ctx, db, next, keys, 2)
	if err != nil || fmt.Sprint(ids(page)) != fmt.Sprint(paid[2:]) {
		t.Fatalf("second page %v (%v), want %v", ids(page), err, paid[2:])
	}
	placed, err := readAll(ctx, db, Position{}, []string{events.OrderPlaced})
	if err != nil || len(placed) != 3 {
		t.Fatalf("order.placed alone: %d events (%v), want 3", len(placed), err)
	}
	head, err := Head(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	none, past, err := Read(ctx, db, Position{}, []string{events.OrderCancelled}, 10)
	if err != nil || len(none) != 0 || past.Before(head) {
		t.Fatalf("a key with no events: %v up to %v (%v), want nothing and the head %v", ids(none), past, err, head)
	}
}

func readAll(ctx context.Context, db *pgxpool.Pool, from Position, keys []string) ([]Entry, error) {
	var all []Entry
	for {
		page, next, err := Read(ctx, db, from, keys, 100)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == from {
			return all, nil
		}
		from = next
	}
}

// mustAppliedTable makes the table the test projection writes to.
func mustAppliedTable(tb testing.TB, db *pgxpool.Pool) {
	tb.Helper()
	if _, err := db.Exec(context.Background(), "CREATE TABLE applied (event_id uuid NOT NULL, tx bigint NOT NULL, id bigint NOT NULL)"); err != nil {
		tb.Fatal(err)
	}
}

// recorder is a projection that records every event it applies.
func recorder(batch int) Projection {
	return Projection{Name: "test", Keys: []string{events.OrderPaid}, Batch: batch, Poll: 5 * time.Millisecond,
		Apply: func(b *pgx.Batch, entries []Entry) error {
			ids, txs, rows := make([]string, len(entries)), make([]int64, len(entries)), make([]int64, len(entries))
			for i, e := range entries {
				ids[i], txs[i], rows[i] = e.Event.ID, e.Position.Tx, e.Position.ID
			}
			b.Queue("INSERT INTO applied SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[])", ids, txs, rows)
			return nil
		}}
}

// TestProjectionExactlyOnce runs two instances of one projection, with
// small batches, while events are written from several goroutines: every
// event of its key is applied once, in commit order.
func TestProjectionExactlyOnce(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	mustAppliedTable(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running sync.WaitGroup
	for range 2 {
		running.Go(func() { _ = recorder(7).Run(ctx, db, zaptest.NewLogger(t)) })
	}
	const writers, each = 4, 40
	var wrote sync.WaitGroup
	for range writers {
		wrote.Go(func() {
			for i := range each {
				key := events.OrderPaid
				if i%4 == 3 {
					key = events.OrderPlaced // not the projection's
				}
				tx, _ := mustBegin(t, db, key)
				if err := tx.Commit(context.Background()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wrote.Wait()
	want := writers * each * 3 / 4
	testenv.Eventually(t, 20*time.Second, "every event applied", func() bool {
		var n int
		_ = db.QueryRow(context.Background(), "SELECT count(*) FROM applied").Scan(&n)
		return n >= want
	})
	cancel()
	running.Wait()
	var n, distinct int
	var ordered bool
	err := db.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT event_id),
		coalesce(bool_and(prev IS NULL OR (prev_tx, prev) < (tx, id)), true)
		FROM (SELECT event_id, tx, id, lag(tx) OVER w AS prev_tx, lag(id) OVER w AS prev
			FROM applied WINDOW w AS (ORDER BY ctid)) a`).Scan(&n, &distinct, &ordered)
	if err != nil {
		t.Fatal(err)
	}
	if n != want || distinct != want || !ordered {
		t.Fatalf("applied %d rows, %d distinct events, in commit order: %v; want %d once each, in order", n, distinct, ordered, want)
	}
}

// TestProjectionResumes: a projection stopped and started again goes on
// from where it was, and the sweep keeps what it has not applied.
func TestProjectionResumes(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	mustAppliedTable(t, db)
	ctx := context.Background()
	write := func(n int) {
		for range n {
			tx, _ := mustBegin(t, db, events.OrderPaid)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func() (n int) {
		if err := db.QueryRow(ctx, "SELECT count(*) FROM applied").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	runUntil := func(n int) {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = recorder(100).Run(rctx, db, zaptest.NewLogger(t)) }()
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%d applied", n), func() bool { return count() >= n })
		cancel()
		<-done
	}
	write(5)
	runUntil(5)
	write(3)
	// Every row is old, and no relay runs here; the sweep may take only
	// what the projection has applied.
	if _, err := db.Exec(ctx, "UPDATE outbox SET created_at = now() - interval '2 days'"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, "DELETE FROM outbox_readers WHERE name = 'relay'"); err != nil {
		t.Fatal(err)
	}
	if _, err := Sweep(ctx, db, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil || left != 3 {
		t.Fatalf("after the sweep %d rows are left (%v), want the 3 the projection has not applied", left, err)
	}
	runUntil(8)
	if n := count(); n != 8 {
		t.Fatalf("applied %d in all, want 8: each once", n)
	}
}

// TestOrderEventsNumbered: each order's events are numbered as they are
// written, by whichever writer, and each lists the routing keys before it;
// with ordering off (dabba.ordering) they are not numbered. The relay sends
// both as headers.
func TestOrderEventsNumbered(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	order, other := uuid.NewString(), uuid.NewString()
	write := func(key, orderID string) {
		t.Helper()
		var b pgx.Batch
		var rows Rows
		if _, err := rows.Add(ctx, key, orderID, time.Now(), map[string]string{}); err != nil {
			t.Fatal(err)
		}
		rows.Queue(&b)
		if err := db.SendBatch(ctx, &b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	write(events.OrderPlaced, order)
	write(events.OrderPlaced, other)
	write(events.OrderPaid, order)
	write(events.OrderCancelled, order)
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET dabba.ordering = 'off'"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (event_id, routing_key, order_id, payload) VALUES ($1, $2, $3, '{}')`,
		uuid.NewString(), events.OrderRefunded, order); err != nil {
		t.Fatal(err)
	}
	conn.Conn().Close(ctx)
	conn.Release()
	got, _, err := Read(ctx, db, Position{}, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []string
	for _, e := range got {
		seqs = append(seqs, fmt.Sprintf("%d%v", e.Seq, e.Prior))
		if e.Seq > 0 {
			h := message(e).Headers
			if h[broker.HeaderSeq] != int32(e.Seq) || h[broker.HeaderPrior] != strings.Join(e.Prior, ",") {
				t.Errorf("headers %v for seq %d prior %v", h, e.Seq, e.Prior)
			}
		}
	}
	want := []string{"1[]", "1[]", "2[order.placed]", "3[order.placed order.paid]", "0[]"}
	if !slices.Equal(seqs, want) {
		t.Fatalf("numbered %v, want %v", seqs, want)
	}
}
