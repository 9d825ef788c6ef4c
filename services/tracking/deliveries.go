package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/services/tracking/history"
	"github.com/dabba/dabba/shared/events"
)

// Bounds of the deliveries registry.
const (
	// loadBatch bounds the riders one look-up reads (at start a whole
	// city's riders arrive within a second).
	loadBatch = 1000
	// maxEarlyFixes bounds the fixes a rider's entry keeps while its
	// deliveries are being read: they are stored once they are known.
	maxEarlyFixes = 8
	// riderForgetAfter is how long a rider who sends nothing stays known.
	riderForgetAfter = 10 * time.Minute
	// recentKeep is how long a status change of an order not (yet) known
	// is remembered, for a look-up under way that read the order before it.
	recentKeep = 30 * time.Second
)

// delivery is an order on its way, as the ingest needs it: its rider, its
// status, where it goes and where it comes from, and which alerts it has
// had (or has under way).
type delivery struct {
	orderID      string
	orderUUID    [16]byte
	riderID      string
	status       string
	statusAt     time.Time
	dest         *Destination // nil: unknown
	kitchen      *Destination // the restaurant; nil: it has no record
	restaurantID string
	email        string
	near         bool // order.rider_near raised
	arriving     bool // order.rider_arriving raised
}

// riderEntry is what the registry knows of a rider: its deliveries, once
// they have been read.
type riderEntry struct {
	loaded bool
	gen    uint64 // bumped by an assignment: a look-up begun before it is stale
	orders []*delivery
	early  []Fix // fixes that came while the deliveries were being read
	seen   atomic.Int64
}

// statusChange is an order's status as the order feed last said it.
type statusChange struct {
	status string
	at     time.Time
	heard  time.Time
}

// Deliveries knows, for every rider the ingest hears from, which orders
// the rider is delivering: read from the orders table the first time the
// rider sends a fix (one look-up for the many riders that arrive at once),
// then kept up to date by the order feed (assignments, statuses). The
// ingest asks it about every fix, so it holds what it knows in memory, and
// a fix that comes while the rider's deliveries are being read waits in
// the rider's entry until they are. Fixes of a rider on a delivery go to
// the history.
type Deliveries struct {
	db      *pgxpool.Pool
	history *History
	alerts  *Alerts // nil: none raised
	log     *zap.Logger
	warn    rate.Sometimes

	mu     sync.RWMutex
	riders map[string]*riderEntry
	orders map[string]*delivery
	recent map[string]statusChange // order → newest status heard for an order not in orders
	queue  map[string]uint64       // riders to look up → their gen when asked
	ready  chan struct{}           // capacity 1: queue is not empty
}

// NewDeliveries returns a registry reading db, writing history and raising
// alerts (nil for none).
func NewDeliveries(db *pgxpool.Pool, history *History, alerts *Alerts, log *zap.Logger) *Deliveries {
	return &Deliveries{db: db, history: history, alerts: alerts, log: log.With(zap.String("component", "deliveries")),
		warn: rate.Sometimes{Interval: 10 * time.Second}, riders: map[string]*riderEntry{}, orders: map[string]*delivery{},
		recent: map[string]statusChange{}, queue: map[string]uint64{}, ready: make(chan struct{}, 1)}
}

// Observe takes a fix the ingest took at at: stored in the history for
// each delivery its rider is on. Entries' order lists and the deliveries in
// them are never changed once shared, only replaced (setLocked, dropLocked),
// so what is read under the read lock can be used after it.
func (d *Deliveries) Observe(f Fix, at time.Time) {
	d.mu.RLock()
	e := d.riders[f.RiderID]
	if e != nil && e.loaded {
		e.seen.Store(at.UnixNano())
		orders := e.orders
		d.mu.RUnlock()
		d.observe(f, at, orders)
		return
	}
	d.mu.RUnlock()

	d.mu.Lock()
	e = d.riders[f.RiderID]
	switch {
	case e == nil:
		e = &riderEntry{}
		d.riders[f.RiderID] = e
		d.askLocked(f.RiderID, e)
	case e.loaded: // loaded meanwhile
		orders := e.orders
		d.mu.Unlock()
		d.observe(f, at, orders)
		return
	}
	e.seen.Store(at.UnixNano())
	if len(e.early) == maxEarlyFixes {
		e.early = append(e.early[:0], e.early[1:]...)
	}
	f.RX = at.UnixNano()
	e.early = append(e.early, f)
	d.mu.Unlock()
}

// observe stores f once for each delivery in orders, and raises the alerts
// its position calls for.
func (d *Deliveries) observe(f Fix, at time.Time, orders []*delivery) {
	for _, o := range orders {
		d.history.Add(history.Row{OrderID: o.orderUUID, RiderID: f.RiderID, Seq: f.Seq, At: at, TS: f.TS, Lat: f.Lat, Lng: f.Lng,
			Heading: float32(f.Heading), Speed: float32(f.SpeedKmh)})
		if d.alerts != nil {
			if kind, dist := d.alerts.due(o, f); kind != "" {
				d.raise(o, kind, dist, f, at)
			}
		}
	}
}

// raise marks the alert raised on the order (so the next fixes do not raise
// it again) and hands it to the alerts writer; if the writer cannot take it
// or fails, the mark is cleared and a later fix raises it again.
func (d *Deliveries) raise(o *delivery, kind string, dist float64, f Fix, at time.Time) {
	d.mu.Lock()
	cur := d.orders[o.orderID]
	if cur == nil || cur.riderID != f.RiderID || alerted(cur, kind) {
		d.mu.Unlock()
		return // ended, reassigned, or raised by a fix just before
	}
	d.setLocked(cur, func(n *delivery) { setAlerted(n, kind, true) })
	a := alert{kind: kind, orderID: cur.orderID, riderID: f.RiderID, distance: dist, lat: f.Lat, lng: f.Lng, at: at,
		email: cur.email, restaurantID: cur.restaurantID}
	d.mu.Unlock()
	if !d.alerts.raise(a, d.unraise) {
		d.unraise(a)
	}
}

// unraise clears an alert's mark after a moment, so that a fix after it
// raises the alert again.
func (d *Deliveries) unraise(a alert) {
	time.AfterFunc(time.Second, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if cur := d.orders[a.orderID]; cur != nil && alerted(cur, a.kind) {
			d.setLocked(cur, func(n *delivery) { setAlerted(n, a.kind, false) })
		}
	})
}

// askLocked queues rider for a look-up. d.mu must be held.
func (d *Deliveries) askLocked(rider string, e *riderEntry) {
	d.queue[rider] = e.gen
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// Update takes in a change the order feed read: an assignment makes the
// rider's deliveries be read again (the order's own row says where it
// goes); a status moves an order on, and a final one ends its delivery.
func (d *Deliveries) Update(u orderUpdate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u.RiderID != "" {
		if o := d.orders[u.OrderID]; o != nil && o.riderID != u.RiderID {
			d.dropLocked(o)
		}
		if e := d.riders[u.RiderID]; e != nil {
			e.gen++
			e.loaded = false
			d.askLocked(u.RiderID, e)
		}
	}
	if o := d.orders[u.OrderID]; o != nil && (u.Near != nil && !o.near || u.Arriving && !o.arriving) {
		// Raised by another instance: this one need not try.
		d.setLocked(o, func(n *delivery) { n.near, n.arriving = n.near || u.Near != nil, n.arriving || u.Arriving })
	}
	if u.Status == "" {
		return
	}
	o := d.orders[u.OrderID]
	if o == nil {
		if prev, ok := d.recent[u.OrderID]; !ok || u.StatusAt.After(prev.at) {
			d.recent[u.OrderID] = statusChange{status: u.Status, at: u.StatusAt, heard: time.Now()}
		}
		return
	}
	if !u.StatusAt.After(o.statusAt) {
		return // older than what is known
	}
	if finished(u.Status) {
		d.dropLocked(o)
		return
	}
	d.setLocked(o, func(n *delivery) { n.status, n.statusAt = u.Status, u.StatusAt })
}

// setLocked changes o by replacing it with a changed copy, so the copies
// Observe took under the read lock stay as they were. d.mu must be held.
func (d *Deliveries) setLocked(o *delivery, change func(*delivery)) {
	n := *o
	change(&n)
	d.orders[o.orderID] = &n
	if e := d.riders[o.riderID]; e != nil {
		orders := make([]*delivery, 0, len(e.orders))
		for _, x := range e.orders {
			if x == o {
				x = &n
			}
			orders = append(orders, x)
		}
		e.orders = orders
	}
}

// dropLocked forgets o. d.mu must be held.
func (d *Deliveries) dropLocked(o *delivery) {
	delete(d.orders, o.orderID)
	if e := d.riders[o.riderID]; e != nil {
		orders := make([]*delivery, 0, len(e.orders))
		for _, x := range e.orders {
			if x != o {
				orders = append(orders, x)
			}
		}
		e.orders = orders
	}
}

// Run reads riders' deliveries as they are asked for, and forgets riders
// gone quiet, until ctx is done.
func (d *Deliveries) Run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.forget(time.Now())
			continue
		case <-d.ready:
		}
		for ctx.Err() == nil {
			asked := d.take()
			if len(asked) == 0 {
				break
			}
			if err := d.load(ctx, asked); err != nil {
				d.warn.Do(func() { d.log.Warn("read riders' deliveries; will retry", zap.Error(err)) })
				d.mu.Lock()
				for r, gen := range asked {
					if _, again := d.queue[r]; !again {
						d.queue[r] = gen
					}
				}
				d.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}
}

// take removes and returns up to loadBatch riders to look up.
func (d *Deliveries) take() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]uint64, min(len(d.queue), loadBatch))
	for r, gen := range d.queue {
		if len(out) == loadBatch {
			break
		}
		out[r] = gen
		delete(d.queue, r)
	}
	return out
}

// deliveriesSQL reads the orders on their way of a set of riders, with the
// time of each one's status (from its history, as loadOrder does), where
// their restaurant is, and the alerts they have had.
const deliveriesSQL = `SELECT o.id::text, o.rider_id, o.status, coalesce(h.at, o.updated_at), o.delivery_address,
		o.restaurant_id, o.email, r.lat, r.lng,
		EXISTS (SELECT 1 FROM tracking_alerts a WHERE a.order_id = o.id AND a.kind = $3),
		EXISTS (SELECT 1 FROM tracking_alerts a WHERE a.order_id = o.id AND a.kind = $4)
	FROM orders o
	LEFT JOIN order_status_history h ON h.order_id = o.id AND h.status = o.status
	LEFT JOIN restaurants r ON r.id = o.restaurant_id
	WHERE o.rider_id = ANY($1) AND o.status <> ALL($2)`

// finalStatuses end a delivery.
var finalStatuses = []string{events.StatusDelivered, events.StatusCancelled, events.StatusPaymentFailed}

// load reads the deliveries of the riders asked and hands each rider's
// entry what it found, with the fixes that waited for it. A rider assigned
// again since it was asked (its gen moved on) is asked again instead.
func (d *Deliveries) load(ctx context.Context, asked map[string]uint64) error {
	riders := make([]string, 0, len(asked))
	for r := range asked {
		riders = append(riders, r)
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := d.db.Query(qctx, deliveriesSQL, riders, finalStatuses, events.OrderRiderNear, events.OrderRiderArriving)
	if err != nil {
		return fmt.Errorf("read deliveries: %w", err)
	}
	found := map[string][]*delivery{}
	for rows.Next() {
		var o delivery
		var addr events.Address
		var klat, klng *float64
		if err := rows.Scan(&o.orderID, &o.riderID, &o.status, &o.statusAt, &addr, &o.restaurantID, &o.email, &klat, &klng,
			&o.near, &o.arriving); err != nil {
			rows.Close()
			return fmt.Errorf("read deliveries: %w", err)
		}
		id, err := uuid.Parse(o.orderID)
		if err != nil {
			rows.Close()
			return fmt.Errorf("read deliveries: order id %q: %w", o.orderID, err)
		}
		o.orderUUID = id
		o.dest = destinationOf(addr)
		if klat != nil && klng != nil {
			o.kitchen = destinationOf(events.Address{Lat: *klat, Lng: *klng})
		}
		found[o.riderID] = append(found[o.riderID], &o)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read deliveries: %w", err)
	}
	type early struct {
		fixes  []Fix
		orders []*delivery
	}
	var replay []early
	d.mu.Lock()
	for rider, gen := range asked {
		e := d.riders[rider]
		if e == nil {
			continue // forgotten meanwhile
		}
		if e.gen != gen {
			d.askLocked(rider, e) // assigned again since: what was read may be stale
			continue
		}
		var orders []*delivery
		for _, o := range found[rider] {
			if prev := d.orders[o.orderID]; prev != nil && prev.riderID != rider {
				d.dropLocked(prev)
			}
			if c, ok := d.recent[o.orderID]; ok && c.at.After(o.statusAt) {
				o.status, o.statusAt = c.status, c.at // the feed said more since the row was read
			}
			if finished(o.status) {
				continue
			}
			d.orders[o.orderID] = o
			orders = append(orders, o)
		}
		e.orders, e.loaded = orders, true
		if len(e.early) > 0 {
			replay = append(replay, early{fixes: e.early, orders: orders})
			e.early = nil
		}
	}
	d.mu.Unlock()
	for _, r := range replay {
		for _, f := range r.fixes {
			d.observe(f, time.Unix(0, f.RX), r.orders)
		}
	}
	return nil
}

// forget drops riders not heard from for riderForgetAfter, and status
// changes remembered for longer than recentKeep.
func (d *Deliveries) forget(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for rider, e := range d.riders {
		if now.Sub(time.Unix(0, e.seen.Load())) > riderForgetAfter {
			for _, o := range e.orders {
				delete(d.orders, o.orderID)
			}
			delete(d.riders, rider)
			delete(d.queue, rider)
		}
	}
	for order, c := range d.recent {
		if now.Sub(c.heard) > recentKeep {
			delete(d.recent, order)
		}
	}
}

// Counts returns how many riders are known, and how many orders they are
// delivering.
func (d *Deliveries) Counts() (riders, orders int) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.riders), len(d.orders)
}

// destinationOf is where an order goes, or nil when its address has no
// usable coordinates.
func destinationOf(addr events.Address) *Destination {
	if !validLatLng(addr.Lat, addr.Lng) || (addr.Lat == 0 && addr.Lng == 0) {
		return nil
	}
	return &Destination{Lat: addr.Lat, Lng: addr.Lng, Line1: addr.Line1}
}

// finished reports whether status ends a delivery: the rider's fixes are no
// longer the order's.
func finished(status string) bool {
	return status == events.StatusDelivered || status == events.StatusCancelled || status == events.StatusPaymentFailed
}
