package main

import (
	"sync"
	"sync/atomic"
	"time"
)

// maxPendingStatuses bounds the status messages a slow customer may have
// waiting; past it the connection is closed as too slow.
const maxPendingStatuses = 16

// statusMsg is a status change as a customer receives it.
type statusMsg struct {
	Type    string    `json:"type"` // "status"
	OrderID string    `json:"order_id"`
	Status  string    `json:"status"`
	At      time.Time `json:"at"`
}

// locationMsg is a fix as a customer receives it.
type locationMsg struct {
	Type string `json:"type"` // "location"
	Fix
}

// watcher is one customer connection: what it watches and what waits to be
// written to it. Fixes coalesce: only the newest unsent one is kept, so a
// slow reader costs one fix of memory, not a backlog.
type watcher struct {
	orderID string

	mu       sync.Mutex
	riderID  string
	fix      *Fix  // newest fix not yet written
	lastSeq  int64 // highest seq handed to this watcher
	statuses []statusMsg
	overflow bool
	wake     chan struct{} // capacity 1: something is pending
}

func newWatcher(orderID, riderID string) *watcher {
	return &watcher{orderID: orderID, riderID: riderID, wake: make(chan struct{}, 1)}
}

func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// offerFix keeps f if it is newer than anything this watcher was given,
// replacing an older unsent fix; it reports whether f was older (stale) and
// whether it replaced an unsent one (coalesced).
func (w *watcher) offerFix(f Fix) (stale, coalesced bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if f.Seq <= w.lastSeq {
		return true, false
	}
	coalesced = w.fix != nil
	w.lastSeq = f.Seq
	w.fix = &f
	w.signal()
	return false, coalesced
}

func (w *watcher) offerStatus(m statusMsg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.statuses) >= maxPendingStatuses {
		w.overflow = true
	} else {
		w.statuses = append(w.statuses, m)
	}
	w.signal()
}

// take returns what is pending and clears it.
func (w *watcher) take() (fix *Fix, statuses []statusMsg, overflow bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fix, statuses, overflow = w.fix, w.statuses, w.overflow
	w.fix, w.statuses = nil, nil
	return fix, statuses, overflow
}

func (w *watcher) rider() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.riderID
}

// HubStats counts what the hub did with fixes.
type HubStats struct {
	In, Out, Stale, Coalesced atomic.Int64
}

// Hub routes fixes and status changes to the customers watching them on
// this instance. It tells its Binder when a rider gains a first watcher or
// loses the last, so the instance only receives the riders it needs.
type Hub struct {
	binder Binder
	Stats  HubStats

	mu      sync.Mutex
	byRider map[string]map[*watcher]bool
	byOrder map[string]map[*watcher]bool
	latest  map[string]Fix // newest fix seen per watched rider
}

// Binder subscribes this instance to a rider's fixes, or ends that.
type Binder interface {
	Bind(riderID string)
	Unbind(riderID string)
}

// NewHub returns an empty hub.
func NewHub(b Binder) *Hub {
	return &Hub{binder: b, byRider: map[string]map[*watcher]bool{}, byOrder: map[string]map[*watcher]bool{}, latest: map[string]Fix{}}
}

// Add registers w.
func (h *Hub) Add(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	add(h.byOrder, w.orderID, w)
	if r := w.rider(); r != "" {
		h.watchRider(r, w)
	}
}

func (h *Hub) watchRider(rider string, w *watcher) {
	if add(h.byRider, rider, w) {
		h.binder.Bind(rider)
	}
}

func (h *Hub) unwatchRider(rider string, w *watcher) {
	if remove(h.byRider, rider, w) {
		delete(h.latest, rider)
		h.binder.Unbind(rider)
	}
}

// Remove unregisters w.
func (h *Hub) Remove(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	remove(h.byOrder, w.orderID, w)
	if r := w.rider(); r != "" {
		h.unwatchRider(r, w)
	}
}

// Latest returns the newest fix this instance has seen for rider.
func (h *Hub) Latest(rider string) (Fix, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.latest[rider]
	return f, ok
}

// Fix hands a fix to every watcher of its rider. Fixes older than the
// newest seen are dropped: the broker may deliver them out of order, and two
// ingest instances may publish a rider's fixes.
func (h *Hub) Fix(f Fix) {
	h.Stats.In.Add(1)
	h.mu.Lock()
	if prev, ok := h.latest[f.RiderID]; ok && f.Seq <= prev.Seq {
		h.mu.Unlock()
		h.Stats.Stale.Add(1)
		return
	}
	ws := h.byRider[f.RiderID]
	if ws != nil {
		h.latest[f.RiderID] = f
	}
	targets := keys(ws)
	h.mu.Unlock()
	for _, w := range targets {
		stale, coalesced := w.offerFix(f)
		switch {
		case stale:
			h.Stats.Stale.Add(1)
		case coalesced:
			h.Stats.Coalesced.Add(1)
		}
	}
}

// Status hands a status change to the watchers of its order.
func (h *Hub) Status(m statusMsg) {
	h.mu.Lock()
	targets := keys(h.byOrder[m.OrderID])
	h.mu.Unlock()
	for _, w := range targets {
		w.offerStatus(m)
	}
}

// Assign moves the watchers of an order to its (new) rider.
func (h *Hub) Assign(orderID, rider string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range keys(h.byOrder[orderID]) {
		w.mu.Lock()
		old := w.riderID
		w.riderID = rider
		w.mu.Unlock()
		if old == rider {
			continue
		}
		if old != "" {
			h.unwatchRider(old, w)
		}
		h.watchRider(rider, w)
	}
}

// Riders lists the riders watched on this instance.
func (h *Hub) Riders() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	rs := make([]string, 0, len(h.byRider))
	for r := range h.byRider {
		rs = append(rs, r)
	}
	return rs
}

// add puts w in m[k] and reports whether it is the first there.
func add(m map[string]map[*watcher]bool, k string, w *watcher) bool {
	set := m[k]
	if set == nil {
		set = map[*watcher]bool{}
		m[k] = set
	}
	set[w] = true
	return len(set) == 1
}

// remove takes w out of m[k] and reports whether it was the last there.
func remove(m map[string]map[*watcher]bool, k string, w *watcher) bool {
	set := m[k]
	if !set[w] {
		return false
	}
	delete(set, w)
	if len(set) == 0 {
		delete(m, k)
		return true
	}
	return false
}

func keys(set map[*watcher]bool) []*watcher {
	out := make([]*watcher, 0, len(set))
	for w := range set {
		out = append(out, w)
	}
	return out
}
