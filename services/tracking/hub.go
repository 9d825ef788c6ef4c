package main

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dabba/dabba/shared/events"
)

// maxPendingStatuses bounds the status messages a customer may have waiting;
// past it the connection is closed as too slow. Statuses only move forward,
// so a healthy connection never comes near it.
const maxPendingStatuses = 16

// Destination is where an order is delivered.
type Destination struct {
	Lat   float64 `json:"lat"`
	Lng   float64 `json:"lng"`
	Line1 string  `json:"line1,omitempty"`
}

// orderUpdate is what tracking knows of an order: read from the orders
// database when a customer connects (loadOrder), then each change the order
// feed reads from the outbox. Zero fields are unknown.
type orderUpdate struct {
	OrderID     string       `json:"order_id"`
	RiderID     string       `json:"rider_id,omitempty"`
	RiderAt     time.Time    `json:"rider_at,omitzero"`
	Status      string       `json:"status,omitempty"`
	StatusAt    time.Time    `json:"status_at,omitzero"`
	Destination *Destination `json:"destination,omitempty"`
	Near        *nearMsg     `json:"near,omitempty"` // order.rider_near was raised
	Arriving    bool         `json:"arriving,omitempty"`
}

// nearMsg is "your rider is near" as a customer receives it.
type nearMsg struct {
	Type      string    `json:"type"` // "rider_near"
	OrderID   string    `json:"order_id"`
	RiderID   string    `json:"rider_id"`
	DistanceM float64   `json:"distance_m"`
	At        time.Time `json:"at"`
}

// followsRider reports whether a customer watching an order in status sees
// its rider: only while the rider carries the order, from picked_up until
// delivered. Before, the rider may be anywhere (another order, home), and
// after, too: none of the customer's business.
func followsRider(status string) bool { return status == events.StatusPickedUp }

// statusMsg is a status change as a customer receives it.
type statusMsg struct {
	Type        string       `json:"type"` // "status"
	OrderID     string       `json:"order_id"`
	Status      string       `json:"status"`
	At          time.Time    `json:"at"`
	Destination *Destination `json:"destination,omitempty"`
}

// locationMsg is a fix as a customer receives it.
type locationMsg struct {
	Type     string    `json:"type"` // "location"
	RiderID  string    `json:"rider_id"`
	Lat      float64   `json:"lat"`
	Lng      float64   `json:"lng"`
	Heading  float64   `json:"heading"`
	SpeedKmh float64   `json:"speed_kmh"`
	Seq      int64     `json:"seq"`
	TS       time.Time `json:"ts"`
}

// Paths a fix takes to a customer.
const (
	viaLocal  = "local"  // the rider's ingest is this instance: handed over in memory
	viaBroker = "broker" // from another instance, through the locations exchange
)

// liveFix is a fix as the hub hands it to its watchers: one value shared by
// all of them, encoded once, however many customers watch the rider.
type liveFix struct {
	Fix
	via     string
	offered int64 // Unix nanoseconds the hub handed it over

	once sync.Once
	msg  []byte
}

func newLiveFix(f Fix, via string) *liveFix {
	return &liveFix{Fix: f, via: via, offered: time.Now().UnixNano()}
}

// message is the fix as its customers receive it.
func (l *liveFix) message() []byte {
	l.once.Do(func() {
		l.msg, _ = json.Marshal(locationMsg{Type: "location", RiderID: l.RiderID, Lat: l.Lat, Lng: l.Lng, Heading: l.Heading,
			SpeedKmh: l.SpeedKmh, Seq: l.Seq, TS: l.TS}) // cannot fail: numbers are finite, checked at ingest
	})
	return l.msg
}

// watcher is one customer connection as the hub sees it: the order it
// watches and what waits to be written to it. Fixes coalesce: only the
// newest unsent one is kept, so a slow reader costs one fix of memory, not a
// backlog, and a fix is never older than one already handed over.
type watcher struct {
	orderID string
	// attached is the rider whose watcher list holds w; only the hub
	// touches it, under Hub.mu.
	attached string

	mu       sync.Mutex
	start    func() // writes what is pending, in its own goroutine; nil until the socket is up
	writing  bool   // start is running and will take what is pending
	closed   bool
	riderID  string
	riderAt  time.Time
	status   string   // the order's latest status; its fixes only while followsRider
	lastSeq  int64    // highest seq handed to this watcher for riderID
	fix      *liveFix // the newest unsent fix, if any
	statuses []statusMsg
	statusAt time.Time
	near     *nearMsg // "your rider is near", not yet written
	nearSeen bool     // it was handed over: once is enough
	dest     *Destination
	overflow bool
}

func newWatcher(orderID string) *watcher {
	return &watcher{orderID: orderID}
}

// setStart attaches the writer; anything already pending is written at once.
func (w *watcher) setStart(start func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.start = start
	w.kickLocked()
}

// pendingLocked reports whether something waits to be written.
func (w *watcher) pendingLocked() bool {
	return w.fix != nil || len(w.statuses) > 0 || w.near != nil || w.overflow
}

// kickLocked starts the writer when something is pending and none runs.
func (w *watcher) kickLocked() {
	if w.start == nil || w.writing || w.closed || !w.pendingLocked() {
		return
	}
	w.writing = true
	go w.start()
}

// offerFix keeps f if it is newer than anything this watcher was given,
// replacing an older unsent fix; it reports whether f was stale and whether
// it replaced an unsent one (coalesced).
func (w *watcher) offerFix(f *liveFix) (stale, coalesced bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !followsRider(w.status) || f.RiderID != w.riderID || f.Seq <= w.lastSeq {
		return true, false
	}
	coalesced = w.fix != nil
	w.lastSeq, w.fix = f.Seq, f
	w.kickLocked()
	return false, coalesced
}

// apply takes in what u says about the order and returns the rider the
// watcher should now follow ("" for none).
func (w *watcher) apply(u orderUpdate) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if u.Destination != nil {
		// What the table says arrives after whatever the feed handed over
		// meanwhile, before anything was written: those statuses go out
		// with the destination too.
		w.dest = u.Destination
		for i := range w.statuses {
			w.statuses[i].Destination = w.dest
		}
	}
	if u.RiderID != "" && u.RiderID != w.riderID && (u.RiderAt.IsZero() || u.RiderAt.After(w.riderAt)) {
		// Another rider's seq says nothing about this one's.
		w.riderID, w.riderAt, w.lastSeq, w.fix = u.RiderID, u.RiderAt, 0, nil
	}
	// "Your rider is near" only while the rider is on the way: the alert
	// is raised as the rider's fixes come and reaches here through the
	// outbox, so it may come after the order was delivered or cancelled.
	if u.Near != nil && !w.nearSeen && !finished(w.status) {
		w.nearSeen, w.near = true, u.Near
		w.kickLocked()
	}
	if u.Status != "" && u.StatusAt.After(w.statusAt) {
		w.statusAt, w.status = u.StatusAt, u.Status
		if !followsRider(w.status) {
			w.fix = nil
		}
		if finished(w.status) {
			w.near = nil
		}
		if len(w.statuses) >= maxPendingStatuses {
			w.overflow = true
		} else {
			w.statuses = append(w.statuses, statusMsg{Type: "status", OrderID: w.orderID, Status: u.Status, At: u.StatusAt, Destination: w.dest})
		}
		w.kickLocked()
	}
	if !followsRider(w.status) {
		return ""
	}
	return w.riderID
}

// take returns what is pending and clears it; ok is false when nothing is,
// and the writer must then stop (the next offer starts it again).
func (w *watcher) take() (p pending, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || !w.pendingLocked() {
		w.writing = false
		return pending{}, false
	}
	p = pending{fix: w.fix, statuses: w.statuses, near: w.near, overflow: w.overflow}
	w.fix, w.statuses, w.near = nil, nil, nil
	return p, true
}

// pending is what a watcher's writer takes to write: statuses first, then
// "your rider is near", then the newest fix.
type pending struct {
	fix      *liveFix
	statuses []statusMsg
	near     *nearMsg
	overflow bool
}

// close stops the writer from being started again.
func (w *watcher) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// HubStats counts what the hub did with fixes.
type HubStats struct {
	In        atomic.Int64 // fixes from the relay
	Local     atomic.Int64 // fixes from this instance's ingest that found a watcher here
	Stale     atomic.Int64 // dropped: not newer than one already seen or sent
	Coalesced atomic.Int64 // replaced an unsent older fix
	Unwatched atomic.Int64 // arrived for a rider no one here watches (any more)
	Sent      atomic.Int64 // written to a customer
	Dropped   atomic.Int64 // customers closed as too slow or stalled
}

// Binder subscribes this instance to a routing key of the live feed, or ends
// that. Calls must not block: the hub makes them under its lock.
type Binder interface {
	Bind(key string)
	Unbind(key string)
}

// riderKey is a rider's routing key on the locations exchange.
func riderKey(riderID string) string { return "rider." + riderID }

// riderWatch is a rider someone on this instance watches.
type riderWatch struct {
	latest   *liveFix // nil until a fix arrives
	watchers []*watcher
}

// Hub routes fixes and order updates to the customers watching them on this
// instance. It tells its Binder when a rider or an order gains a first
// watcher or loses the last, so the instance receives only what it needs.
// It never blocks on a customer: offering a message is a few assignments
// under a lock, and writing happens in each connection's own goroutine.
type Hub struct {
	binder Binder
	Stats  HubStats

	mu     sync.Mutex
	riders map[string]*riderWatch
	orders map[string][]*watcher
}

// NewHub returns an empty hub.
func NewHub(b Binder) *Hub {
	return &Hub{binder: b, riders: map[string]*riderWatch{}, orders: map[string][]*watcher{}}
}

// Add registers w for its order's updates.
func (h *Hub) Add(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.orders[w.orderID] = append(h.orders[w.orderID], w)
}

// Remove unregisters w.
func (h *Hub) Remove(w *watcher) {
	w.close()
	h.mu.Lock()
	defer h.mu.Unlock()
	ws, found := without(h.orders[w.orderID], w)
	if !found {
		return
	}
	if len(ws) == 0 {
		delete(h.orders, w.orderID)
	} else {
		h.orders[w.orderID] = ws
	}
	h.follow(w, "")
}

// Update hands an order update to the watchers of its order, if any.
func (h *Hub) Update(u orderUpdate) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.orders[u.OrderID] {
		h.follow(w, w.apply(u))
	}
}

// Apply hands u to w alone: what a newly connected customer is told first.
func (h *Hub) Apply(w *watcher, u orderUpdate) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.orders[w.orderID] {
		if x == w {
			h.follow(w, w.apply(u))
			return
		}
	}
}

// follow moves w to rider's watcher list ("" for none), binding and
// unbinding as riders gain their first watcher or lose their last. A rider
// already watched here hands w its latest fix at once. h.mu must be held.
func (h *Hub) follow(w *watcher, rider string) {
	if w.attached == rider {
		return
	}
	if old := w.attached; old != "" {
		rw := h.riders[old]
		rw.watchers, _ = without(rw.watchers, w)
		if len(rw.watchers) == 0 {
			delete(h.riders, old)
			h.binder.Unbind(riderKey(old))
		}
	}
	w.attached = rider
	if rider == "" {
		return
	}
	rw := h.riders[rider]
	if rw == nil {
		rw = &riderWatch{}
		h.riders[rider] = rw
		h.binder.Bind(riderKey(rider))
	}
	rw.watchers = append(rw.watchers, w)
	if rw.latest != nil {
		w.offerFix(rw.latest)
	}
}

// Latest returns the newest fix this instance has seen for rider.
func (h *Hub) Latest(rider string) (Fix, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rw := h.riders[rider]; rw != nil && rw.latest != nil {
		return rw.latest.Fix, true
	}
	return Fix{}, false
}

// Fix hands a fix from the relay to every watcher of its rider.
func (h *Hub) Fix(f Fix) {
	h.Stats.In.Add(1)
	if !h.offer(f, viaBroker) {
		h.Stats.Unwatched.Add(1)
	}
}

// Local hands a fix this instance's ingest took to the rider's watchers
// here, if there are any, without a trip through the broker.
func (h *Hub) Local(f Fix) {
	if h.offer(f, viaLocal) {
		h.Stats.Local.Add(1)
	}
}

// offer hands f to every watcher of its rider and reports whether the rider
// has any. A fix not newer than the newest seen is dropped: the broker may
// deliver fixes out of order, two ingest instances may publish a rider's
// fixes, and a fix handed over here by the local ingest may come back from
// the broker.
func (h *Hub) offer(f Fix, via string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	rw := h.riders[f.RiderID]
	switch {
	case rw == nil:
		return false
	case rw.latest != nil && f.Seq <= rw.latest.Seq:
		h.Stats.Stale.Add(1)
		return true
	}
	lf := newLiveFix(f, via)
	rw.latest = lf
	for _, w := range rw.watchers {
		stale, coalesced := w.offerFix(lf)
		switch {
		case stale:
			h.Stats.Stale.Add(1)
		case coalesced:
			h.Stats.Coalesced.Add(1)
		}
	}
	return true
}

// Counts returns how many customers, orders and riders are watched here.
func (h *Hub) Counts() (customers, orders, riders int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ws := range h.orders {
		customers += len(ws)
	}
	return customers, len(h.orders), len(h.riders)
}

// without removes w from ws (order does not matter) and reports whether it
// was there.
func without(ws []*watcher, w *watcher) ([]*watcher, bool) {
	for i, x := range ws {
		if x == w {
			last := len(ws) - 1
			ws[i], ws[last] = ws[last], nil
			return ws[:last], true
		}
	}
	return ws, false
}
