package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/dabba/dabba/services/tracking/history"
	"github.com/dabba/dabba/shared/testenv"
)

// TestCopyRoundTrip writes rows with the hand-made binary COPY and reads
// them back through PostgreSQL's own decoding: every field as written.
func TestCopyRoundTrip(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	if _, err := db.Exec(ctx, "CREATE TABLE fixes (LIKE rider_fixes INCLUDING DEFAULTS)"); err != nil {
		t.Fatal(err)
	}
	order := uuid.New()
	at := time.Date(2026, 12, 7, 10, 11, 12, 123456000, time.UTC)
	want := []history.Row{
		{OrderID: order, RiderID: "rider-7", Seq: 1, At: at, TS: at.Add(-time.Second), Lat: 19.021234, Lng: 72.841234, Heading: 90.5, Speed: 22.25},
		{OrderID: order, RiderID: "rider-ü", Seq: 1 << 40, At: at.Add(time.Hour), TS: at, Lat: -89.9, Lng: -179.99, Heading: 0, Speed: 0},
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := history.Copy(ctx, conn.Conn().PgConn(), "fixes", want)
	conn.Release()
	if err != nil || n != 2 {
		t.Fatalf("copy: %d rows, %v", n, err)
	}
	rows, _ := db.Query(ctx, "SELECT order_id, rider_id, seq, at, ts, lat, lng, heading, speed_kmh FROM fixes ORDER BY seq")
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (history.Row, error) {
		var r history.Row
		var id uuid.UUID
		err := row.Scan(&id, &r.RiderID, &r.Seq, &r.At, &r.TS, &r.Lat, &r.Lng, &r.Heading, &r.Speed)
		r.OrderID, r.At, r.TS = id, r.At.UTC(), r.TS.UTC()
		return r, err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: read %+v, wrote %+v", i, got[i], want[i])
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	rows := make([]history.Row, 1000)
	for i := range rows {
		rows[i] = history.Row{OrderID: uuid.New(), RiderID: "bench-rider-1234", Seq: int64(i), At: time.Now(), TS: time.Now(), Lat: 19, Lng: 72}
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = history.Encode(buf[:0], rows)
	}
}
