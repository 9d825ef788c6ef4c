package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/services/tracking/history"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// partitionsOf lists rider_fixes' partitions in db.
func partitionsOf(t *testing.T, h *History) []string {
	t.Helper()
	tx, err := h.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	names, err := partitions(context.Background(), tx)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestHistoryPartitions(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	h := NewHistory(db, 3, zaptest.NewLogger(t))
	ctx := context.Background()
	now := time.Now()
	today := now.UTC().Truncate(24 * time.Hour)
	for _, back := range []int{10, 4, 3} {
		day := today.AddDate(0, 0, -back)
		if _, err := db.Exec(ctx, fmt.Sprintf("CREATE TABLE %s PARTITION OF rider_fixes FOR VALUES FROM ('%s') TO ('%s')",
			partitionName(day), day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.maintain(ctx, now); err != nil {
		t.Fatal(err)
	}
	// Kept: the last three days' (of which the test made one), and from
	// yesterday to historyAhead days ahead (made by maintain).
	want := []string{partitionName(today.AddDate(0, 0, -3))}
	for d := -1; d <= historyAhead; d++ {
		want = append(want, partitionName(today.AddDate(0, 0, d)))
	}
	if got := partitionsOf(t, h); !slices.Equal(got, want) {
		t.Fatalf("partitions %v, want %v (3 days kept, today, %d ahead)", got, want, historyAhead)
	}
}

func TestHistoryWrites(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	h := NewHistory(db, 7, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- h.Run(ctx) }()
	order := uuid.New()
	now := time.Now()
	const n = 2500
	for i := range n {
		h.Add(history.Row{OrderID: order, RiderID: "r1", Seq: int64(i + 1), At: now, TS: now, Lat: 19, Lng: 72})
	}
	testenv.Eventually(t, 5*time.Second, "every row written", func() bool { return h.Stats.Written.Load() == n })
	if b := h.Stats.Batches.Load(); b != 3 {
		t.Errorf("%d batches for %d rows, want 3 (at most %d a COPY)", b, n, historyBatch)
	}
	var stored int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM rider_fixes WHERE order_id = $1", order.String()).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != n {
		t.Fatalf("%d rows stored, want %d", stored, n)
	}
	// What is still waiting when the writer stops is written on the way out.
	h.Add(history.Row{OrderID: order, RiderID: "r1", Seq: n + 1, At: now, TS: now, Lat: 19, Lng: 72})
	cancel()
	<-done
	if h.Stats.Written.Load() != n+1 || h.Stats.Shed.Load() != 0 {
		t.Fatalf("written %d shed %d after stopping, want %d and 0", h.Stats.Written.Load(), h.Stats.Shed.Load(), n+1)
	}
}

func TestHistoryShedsPastItsBacklog(t *testing.T) {
	h := NewHistory(nil, 7, zaptest.NewLogger(t)) // never runs: as if the database were too slow
	for i := range historyBacklog + 5 {
		h.Add(history.Row{Seq: int64(i)})
	}
	if shed := h.Stats.Shed.Load(); shed != 5 {
		t.Fatalf("shed %d, want 5", shed)
	}
}

func TestDeliveries(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	h := NewHistory(db, 7, zaptest.NewLogger(t)) // not running: rows stay in its backlog
	d := NewDeliveries(db, h, nil, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	rider := "rider-" + uuid.NewString()[:8]
	orderID, announce := mustOrder(t, db, rider)
	rows := func() []history.Row {
		h.mu.Lock()
		defer h.mu.Unlock()
		return slices.Clone(h.rows)
	}
	at := time.Now()
	// The first fix comes before the rider's deliveries are known: it
	// waits for them, then is stored.
	d.Observe(Fix{RiderID: rider, Seq: 1, Lat: 19, Lng: 72, TS: at}, at)
	testenv.Eventually(t, 5*time.Second, "the first fix stored", func() bool { return len(rows()) == 1 })
	d.Observe(Fix{RiderID: rider, Seq: 2, Lat: 19, Lng: 72, TS: at}, at)
	d.Observe(Fix{RiderID: "nobody-" + rider, Seq: 1, TS: at}, at) // on no delivery: never stored
	got := rows()
	if len(got) != 2 || uuid.UUID(got[0].OrderID).String() != orderID || got[1].Seq != 2 {
		t.Fatalf("history rows %+v, want seq 1 and 2 of order %s", got, orderID)
	}
	// Delivered: the rider's fixes are no longer the order's.
	announce(events.OrderDelivered, events.StatusChanged{Status: events.StatusDelivered, From: events.StatusPaid})
	d.Update(orderUpdate{OrderID: orderID, Status: events.StatusDelivered, StatusAt: time.Now()})
	d.Observe(Fix{RiderID: rider, Seq: 3, TS: at}, at)
	time.Sleep(100 * time.Millisecond)
	if n := len(rows()); n != 2 {
		t.Fatalf("%d rows after the delivery, want 2", n)
	}
	// A new assignment is read again from the orders table.
	other, announceOther := mustOrder(t, db, "")
	announceOther(events.OrderRiderAssigned, events.RiderAssigned{RiderID: rider})
	d.Update(orderUpdate{OrderID: other, RiderID: rider, RiderAt: time.Now()})
	d.Observe(Fix{RiderID: rider, Seq: 4, TS: at}, at)
	testenv.Eventually(t, 5*time.Second, "a fix of the new delivery stored", func() bool {
		r := rows()
		return len(r) == 3 && uuid.UUID(r[2].OrderID).String() == other && r[2].Seq == 4
	})
}

func TestAlertsOncePerOrder(t *testing.T) {
	db := testenv.MustOwnSchema(t) // an outbox of its own: the rows counted are the test's
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	rider := "rider-" + uuid.NewString()[:8]
	orderID, announce := mustOrder(t, db, rider) // paid, delivered to 19.02, 72.84, from restaurant r1
	if _, err := db.Exec(ctx, "INSERT INTO restaurants (id, name, lat, lng) VALUES ('r1', 'Kitchen', 19.00, 72.84)"); err != nil {
		t.Fatal(err)
	}
	// Two instances, as two tracking processes would be.
	newInstance := func() (*Deliveries, *Alerts) {
		a := NewAlerts(db, 300, log)
		d := NewDeliveries(db, NewHistory(db, 7, log), a, log)
		go d.Run(ctx)
		go a.Run(ctx)
		return d, a
	}
	d1, a1 := newInstance()
	d2, a2 := newInstance()
	outboxRows := func(key string) int {
		var n int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE order_id = $1 AND routing_key = $2", orderID, key).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	seq := int64(0)
	fix := func(d *Deliveries, lat float64) {
		seq++
		d.Observe(Fix{RiderID: rider, Seq: seq, Lat: lat, Lng: 72.84, TS: time.Now()}, time.Now())
	}
	// 1.1 km from the kitchen, then 222 m: arriving, once, whichever
	// instance sees it first.
	fix(d1, 19.01)
	fix(d2, 19.01)
	time.Sleep(200 * time.Millisecond)
	if n := outboxRows(events.OrderRiderArriving); n != 0 {
		t.Fatalf("arriving raised 1.1 km away")
	}
	for range 3 {
		fix(d1, 19.002)
		fix(d2, 19.002)
	}
	testenv.Eventually(t, 5*time.Second, "rider arriving raised", func() bool { return outboxRows(events.OrderRiderArriving) == 1 })
	testenv.Eventually(t, 5*time.Second, "both instances done", func() bool {
		return a1.Raised.Load()+a2.Raised.Load() == 1 && a1.Raised.Load()+a1.Repeated.Load()+a2.Raised.Load()+a2.Repeated.Load() == 2
	})
	// Near the door before the pickup: not "near" (the food is not on its
	// way yet). Picked up: near, once.
	fix(d1, 19.0195)
	time.Sleep(200 * time.Millisecond)
	if n := outboxRows(events.OrderRiderNear); n != 0 {
		t.Fatal("rider_near raised before the pickup")
	}
	announce(events.OrderPickedUp, events.StatusChanged{Status: events.StatusPickedUp, From: events.StatusPaid})
	up := orderUpdate{OrderID: orderID, Status: events.StatusPickedUp, StatusAt: time.Now()}
	d1.Update(up)
	d2.Update(up)
	for range 3 {
		fix(d1, 19.0195)
		fix(d2, 19.0195)
	}
	testenv.Eventually(t, 5*time.Second, "rider near raised", func() bool { return outboxRows(events.OrderRiderNear) == 1 })
	// And after a restart: the new instance reads that it was raised.
	d3, a3 := newInstance()
	fix(d3, 19.0195)
	fix(d3, 19.0196)
	time.Sleep(300 * time.Millisecond)
	if n := outboxRows(events.OrderRiderNear); n != 1 || a3.Raised.Load() != 0 {
		t.Fatalf("after a restart: %d rider_near rows, %d raised, want 1 and 0", n, a3.Raised.Load())
	}
	var e events.RiderNear
	var payload []byte
	if err := db.QueryRow(ctx, "SELECT payload FROM outbox WHERE order_id = $1 AND routing_key = $2", orderID, events.OrderRiderNear).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	env, err := events.Decode(payload)
	if err == nil {
		err = events.DecodeData(env, &e)
	}
	if err != nil || e.RiderID != rider || e.Email != "c1@example.com" || e.DistanceM > 300 || e.DistanceM < 50 {
		t.Fatalf("rider_near event %+v (%v)", e, err)
	}
}

func TestDistance(t *testing.T) {
	// One thousandth of a degree of latitude is about 111 m anywhere.
	if d := distance(19, 72.84, 19.001, 72.84); d < 110 || d > 112 {
		t.Fatalf("distance %.1f m, want about 111", d)
	}
	if d := distance(19, 72.84, 19, 72.84); d != 0 {
		t.Fatalf("distance to itself %.1f", d)
	}
}
