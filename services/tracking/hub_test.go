package main

import (
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"
)

type recordingBinder struct {
	mu    sync.Mutex
	calls []string
}

func (b *recordingBinder) Bind(k string) {
	b.mu.Lock()
	b.calls = append(b.calls, "+"+k)
	b.mu.Unlock()
}

func (b *recordingBinder) Unbind(k string) {
	b.mu.Lock()
	b.calls = append(b.calls, "-"+k)
	b.mu.Unlock()
}

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// mustWatch adds a watcher of order, picked up by rider: one that follows
// the rider.
func mustWatch(tb testing.TB, h *Hub, order, rider string) *watcher {
	tb.Helper()
	w := newWatcher(order)
	h.Add(w)
	h.Apply(w, orderUpdate{OrderID: order, RiderID: rider, RiderAt: t0, Status: "picked_up", StatusAt: t0})
	return w
}

// pendingSeq returns the seq of the fix waiting for w (0 for none) and
// clears what is pending.
func pendingSeq(w *watcher) int64 {
	p, _ := w.take()
	if p.fix == nil {
		return 0
	}
	return p.fix.Seq
}

func TestHubBindsWhileWatched(t *testing.T) {
	b := &recordingBinder{}
	h := NewHub(b)
	w1 := mustWatch(t, h, "o1", "r1")
	w2 := mustWatch(t, h, "o2", "r1")
	w3 := mustWatch(t, h, "o2", "r1")
	h.Remove(w1)
	h.Remove(w2)
	h.Remove(w3)
	h.Remove(w3) // twice is harmless
	want := []string{"+rider.r1", "-rider.r1"}
	if !slices.Equal(b.calls, want) {
		t.Fatalf("binder calls %v, want %v", b.calls, want)
	}
	if c, o, r := h.Counts(); c+o+r != 0 {
		t.Fatalf("counts %d %d %d after everyone left", c, o, r)
	}
}

func TestHubDropsStaleFixes(t *testing.T) {
	h := NewHub(&recordingBinder{})
	w := mustWatch(t, h, "o1", "r1")
	for _, seq := range []int64{5, 3, 5, 6, 4} {
		h.Fix(Fix{RiderID: "r1", Seq: seq})
	}
	if got := pendingSeq(w); got != 6 {
		t.Fatalf("pending fix seq %d, want 6", got)
	}
	if got := h.Stats.Stale.Load(); got != 3 {
		t.Fatalf("stale = %d, want 3", got)
	}
	if got := h.Stats.Coalesced.Load(); got != 1 {
		t.Fatalf("coalesced = %d, want 1 (5 replaced by 6 unsent)", got)
	}
	h.Fix(Fix{RiderID: "r1", Seq: 6})
	if got := pendingSeq(w); got != 0 {
		t.Fatalf("seq 6 offered twice")
	}
	h.Fix(Fix{RiderID: "nobody", Seq: 1})
	if got := h.Stats.Unwatched.Load(); got != 1 {
		t.Fatalf("unwatched = %d, want 1", got)
	}
}

func TestHubNewWatcherGetsLatestAtOnce(t *testing.T) {
	h := NewHub(&recordingBinder{})
	mustWatch(t, h, "o1", "r1")
	h.Fix(Fix{RiderID: "r1", Seq: 9})
	w := mustWatch(t, h, "o2", "r1")
	if got := pendingSeq(w); got != 9 {
		t.Fatalf("new watcher has seq %d pending, want 9", got)
	}
	if f, ok := h.Latest("r1"); !ok || f.Seq != 9 {
		t.Fatalf("Latest = %+v %v", f, ok)
	}
	// What the table says is older than what the hub saw: never sent.
	if stale, _ := w.offerFix(newLiveFix(Fix{RiderID: "r1", Seq: 8}, "")); !stale {
		t.Fatal("an older stored position was offered after a newer one")
	}
}

func TestHubReassignment(t *testing.T) {
	b := &recordingBinder{}
	h := NewHub(b)
	w := mustWatch(t, h, "o1", "r1")
	h.Fix(Fix{RiderID: "r1", Seq: 100})
	pendingSeq(w)
	// An older assignment delivered late changes nothing.
	h.Update(orderUpdate{OrderID: "o1", RiderID: "r0", RiderAt: t0.Add(-time.Minute)})
	h.Update(orderUpdate{OrderID: "o1", RiderID: "r2", RiderAt: t0.Add(time.Minute)})
	// The new rider's seq starts afresh; the old rider's fixes no longer come.
	h.Fix(Fix{RiderID: "r1", Seq: 101})
	h.Fix(Fix{RiderID: "r2", Seq: 1})
	p, _ := w.take()
	if p.fix == nil || p.fix.RiderID != "r2" || p.fix.Seq != 1 {
		t.Fatalf("pending %+v, want r2's seq 1", p.fix)
	}
	want := []string{"+rider.r1", "-rider.r1", "+rider.r2"}
	if !slices.Equal(b.calls, want) {
		t.Fatalf("binder calls %v, want %v", b.calls, want)
	}
}

// TestHubStatuses: statuses reach the customer newest last and once each;
// the rider assigned to the order is followed only from picked_up until
// delivered: no binding and no fix before, none after.
func TestHubStatuses(t *testing.T) {
	b := &recordingBinder{}
	h := NewHub(b)
	w := newWatcher("o1")
	h.Add(w)
	h.Apply(w, orderUpdate{OrderID: "o1", RiderID: "r1", RiderAt: t0}) // assigned, not picked up
	dest := &Destination{Lat: 19, Lng: 72}
	h.Update(orderUpdate{OrderID: "o1", Status: "paid", StatusAt: t0.Add(time.Second), Destination: dest})
	h.Update(orderUpdate{OrderID: "o1", Status: "placed", StatusAt: t0})                    // older
	h.Update(orderUpdate{OrderID: "o1", Status: "paid", StatusAt: t0.Add(time.Second)})     // again
	h.Update(orderUpdate{OrderID: "o1", Status: "accepted", StatusAt: t0.Add(time.Minute)}) // newer
	h.Fix(Fix{RiderID: "r1", Seq: 4})
	p, _ := w.take()
	fix, hasFix, statuses := p.fix, p.fix != nil, p.statuses
	var got []string
	for _, s := range statuses {
		got = append(got, s.Status)
	}
	if !slices.Equal(got, []string{"paid", "accepted"}) {
		t.Fatalf("statuses %v, want [paid accepted]", got)
	}
	if statuses[1].Destination == nil || statuses[1].Destination.Lat != 19 {
		t.Fatalf("destination not carried: %+v", statuses[1])
	}
	if hasFix || len(b.calls) > 0 {
		t.Fatalf("before the pick-up: fix %+v (%v), binder calls %v; want neither the rider's fixes nor its binding", fix, hasFix, b.calls)
	}
	// Picked up: the customer follows the rider.
	h.Update(orderUpdate{OrderID: "o1", Status: "picked_up", StatusAt: t0.Add(2 * time.Minute)})
	h.Fix(Fix{RiderID: "r1", Seq: 5})
	if got := pendingSeq(w); got != 5 {
		t.Fatalf("picked up: pending fix %d, want 5", got)
	}
	// Delivered: the customer stops following the rider.
	h.Update(orderUpdate{OrderID: "o1", Status: "delivered", StatusAt: t0.Add(time.Hour)})
	h.Fix(Fix{RiderID: "r1", Seq: 6})
	if p, _ := w.take(); p.fix != nil {
		t.Fatalf("fix %+v sent after delivery", p.fix)
	}
	if want := []string{"+rider.r1", "-rider.r1"}; !slices.Equal(b.calls, want) {
		t.Fatalf("binder calls %v, want %v", b.calls, want)
	}
}

func TestWatcherWriterRunsOnlyWhileBusy(t *testing.T) {
	h := NewHub(&recordingBinder{})
	w := mustWatch(t, h, "o1", "r1")
	started := make(chan struct{}, 10)
	h.Fix(Fix{RiderID: "r1", Seq: 1}) // pending before the socket is up
	w.setStart(func() { started <- struct{}{} })
	<-started
	h.Fix(Fix{RiderID: "r1", Seq: 2}) // the writer runs: no second one
	select {
	case <-started:
		t.Fatal("a second writer started while one runs")
	case <-time.After(20 * time.Millisecond):
	}
	if got := pendingSeq(w); got != 2 {
		t.Fatalf("coalesced seq %d, want 2", got)
	}
	if _, ok := w.take(); ok {
		t.Fatal("take reported work with nothing pending")
	}
	h.Fix(Fix{RiderID: "r1", Seq: 3}) // the writer had stopped: a new one starts
	select {
	case <-started:
	case <-time.After(time.Second):
		t.Fatal("no writer started for a new fix")
	}
}

func TestWatcherOverflow(t *testing.T) {
	w := newWatcher("o1")
	for i := range maxPendingStatuses + 1 {
		w.apply(orderUpdate{OrderID: "o1", Status: "paid", StatusAt: t0.Add(time.Duration(i) * time.Second)})
	}
	if p, _ := w.take(); !p.overflow || len(p.statuses) != maxPendingStatuses {
		t.Fatalf("statuses %d overflow %v", len(p.statuses), p.overflow)
	}
}

type recordingSink struct{ fixes []Fix }

func (s *recordingSink) Fix(f Fix) { s.fixes = append(s.fixes, f) }

func TestRelayHandle(t *testing.T) {
	r := NewRelay(nil, NewInterest("self"), zaptest.NewLogger(t))
	sink := &recordingSink{}
	tests := []struct {
		name, key, body string
		wantFix         int
	}{
		{"OKFix", "rider.r1", `{"rider_id":"r1","lat":1,"lng":2,"seq":3,"ts":"2026-11-23T12:00:00Z"}`, 1},
		{"ErrRiderMismatch", "rider.r2", `{"rider_id":"r1","seq":3}`, 0},
		{"ErrNoSeq", "rider.r1", `{"rider_id":"r1"}`, 0},
		{"ErrGarbage", "rider.r1", `{`, 0},
		{"ErrOrderKey", "order.o1", `{"order_id":"o1"}`, 0},
		{"ErrOtherKey", "something", `{}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink.fixes = nil
			r.handle(amqp.Delivery{RoutingKey: tt.key, Body: []byte(tt.body)}, sink)
			if len(sink.fixes) != tt.wantFix {
				t.Fatalf("fixes %d, want %d", len(sink.fixes), tt.wantFix)
			}
		})
	}
}
