// Package history writes riders' fixes to rider_fixes with COPY in
// PostgreSQL's binary format, encoded here rather than value by value
// through pgx's type map: at a city's 20,000 fixes a second, pgx's general
// encoding (a plan looked up per value, a failed attempt and an error built
// for a string bound for a uuid column) cost the tracking service a fifth
// of its CPU. The tracking service's history writer uses it, and so does
// the benchmark's ceiling, so both measure the same writing.
package history

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Row is one fix of a rider on one delivery.
type Row struct {
	OrderID        [16]byte // a UUID
	RiderID        string
	Seq            int64
	At, TS         time.Time // when the ingest took it; the rider's own time
	Lat, Lng       float64
	Heading, Speed float32
}

// copySQL copies rows of rider_fixes' shape into a table.
const copySQL = "COPY %s (order_id, rider_id, seq, at, ts, lat, lng, heading, speed_kmh) FROM STDIN (FORMAT binary)"

// Copy writes rows into table (quoted by the caller if need be) over conn
// with one COPY, and returns how many PostgreSQL took. It runs in whatever
// transaction conn is in.
func Copy(ctx context.Context, conn *pgconn.PgConn, table string, rows []Row) (int64, error) {
	buf := Encode(nil, rows)
	tag, err := conn.CopyFrom(ctx, bytes.NewReader(buf), fmt.Sprintf(copySQL, table))
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// pgEpoch is where PostgreSQL's timestamps count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Encode appends rows to buf as a binary COPY stream: the signature, flags
// and extension length, then each row as its field count and each field as
// its length and bytes (big-endian), then the trailer.
func Encode(buf []byte, rows []Row) []byte {
	buf = append(buf, "PGCOPY\n\xff\r\n\x00"...)
	buf = binary.BigEndian.AppendUint32(buf, 0) // flags
	buf = binary.BigEndian.AppendUint32(buf, 0) // header extension
	for i := range rows {
		r := &rows[i]
		buf = binary.BigEndian.AppendUint16(buf, 9)
		buf = binary.BigEndian.AppendUint32(buf, 16)
		buf = append(buf, r.OrderID[:]...)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(r.RiderID)))
		buf = append(buf, r.RiderID...)
		buf = int64Field(buf, r.Seq)
		buf = int64Field(buf, r.At.Sub(pgEpoch).Microseconds())
		buf = int64Field(buf, r.TS.Sub(pgEpoch).Microseconds())
		buf = int64Field(buf, int64(math.Float64bits(r.Lat)))
		buf = int64Field(buf, int64(math.Float64bits(r.Lng)))
		buf = int32Field(buf, math.Float32bits(r.Heading))
		buf = int32Field(buf, math.Float32bits(r.Speed))
	}
	return binary.BigEndian.AppendUint16(buf, 0xffff)
}

func int64Field(buf []byte, v int64) []byte {
	buf = binary.BigEndian.AppendUint32(buf, 8)
	return binary.BigEndian.AppendUint64(buf, uint64(v))
}

func int32Field(buf []byte, v uint32) []byte {
	buf = binary.BigEndian.AppendUint32(buf, 4)
	return binary.BigEndian.AppendUint32(buf, v)
}
