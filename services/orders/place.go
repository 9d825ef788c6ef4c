package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
)

// Placing orders is a group commit: requests that arrive while earlier ones
// are being committed wait, and the next free committer places all of them
// in one transaction of two round trips, with one statement per table
// rather than one per order. A lone request is placed at once, in a group
// of one, so grouping costs no latency when the API is quiet; under load an
// order costs the database a share of one commit instead of a commit of its
// own (the WAL flush, BEGIN/COMMIT, four statements' parse and plan).
// Every order is still committed, with synchronous_commit on, before its
// 201.
const (
	// placeCommitters bounds the groups being committed at once, and so
	// the pool connections placing takes (of orders' 16).
	placeCommitters = 4
	// placeGroupMax bounds a group: ORDERS_MAX_IN_FLIGHT (64) requests at
	// most are in flight anyway.
	placeGroupMax = 64
	// placeTimeout bounds a group's transaction; a request's own deadline
	// does not, since the others of its group are not its to cancel.
	placeTimeout = 3 * time.Second
)

// savedResponse is the first answer to an idempotent request.
type savedResponse struct {
	Status   int
	Body     []byte
	Location string
	Replayed bool
}

// placeCall is one request to Place, waiting for its group's commit.
type placeCall struct {
	ctx     context.Context
	key     string
	req     placeRequest
	lines   []line
	order   Order // its items and total are the menu's, filled in by the group
	respond func(Order) ([]byte, error)
	done    chan placeResult // buffered: a committer never waits on a caller
	taken   bool             // in a group; guarded by placeQueue.mu
	// Filled in by the group's transaction.
	res savedResponse
	err error
}

type placeResult struct {
	res savedResponse
	err error
}

// placeQueue is the requests waiting to be placed and the committer slots.
type placeQueue struct {
	mu      sync.Mutex
	pending []*placeCall
	slots   chan struct{}
}

func newPlaceQueue() placeQueue {
	return placeQueue{slots: make(chan struct{}, placeCommitters)}
}

// take removes up to placeGroupMax waiting calls, oldest first.
func (q *placeQueue) take() []*placeCall {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.pending), placeGroupMax)
	group := q.pending[:n:n]
	q.pending = q.pending[n:]
	for _, c := range group {
		c.taken = true
	}
	return group
}

// isTaken reports whether c is in a group already.
func (q *placeQueue) isTaken(c *placeCall) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return c.taken
}

// Place prices a new order's lines from its restaurant's menu and stores
// the order, its first history entry, its order.placed outbox event and the
// idempotency record of the request, in one transaction with the other
// requests placed at the same moment. The response is rendered inside the
// transaction by respond so the record holds exactly the bytes sent. A line
// the menu does not price as asked fails the request alone (a *LineError,
// or ErrZeroTotal).
//
// A transaction-scoped advisory lock on (customer, key) serialises requests
// that share a key: the second one, finding the lock taken, gets
// ErrKeyInFlight at once instead of waiting; once the first committed, it
// finds the record and replays it. Two requests with one key in the same
// group are the same race, decided the same way.
//
// The caller that finds a committer slot free commits whatever is waiting,
// its own request or not, and then returns once its own is done: no
// goroutine of its own, nothing to start or stop.
func (s *Store) Place(ctx context.Context, key string, req placeRequest, lines []line, o Order, respond func(Order) ([]byte, error)) (savedResponse, error) {
	c := &placeCall{ctx: ctx, key: key, req: req, lines: lines, order: o, respond: respond, done: make(chan placeResult, 1)}
	q := &s.placing
	q.mu.Lock()
	q.pending = append(q.pending, c)
	q.mu.Unlock()
	for {
		// Once another caller took c into its group, c only waits:
		// competing for a slot then would spin.
		var slots chan struct{}
		if !q.isTaken(c) {
			slots = q.slots
		}
		select {
		case r := <-c.done:
			return r.res, r.err
		case <-ctx.Done():
			// Still waiting, or in a group being committed: either way
			// the client has gone; a retry with its key finds what
			// happened.
			return savedResponse{}, fmt.Errorf("place order: %w", ctx.Err())
		case slots <- struct{}{}:
			if group := q.take(); len(group) > 0 {
				s.placeGroup(group)
			}
			<-slots
		}
	}
}

// placeGroup places group and tells each call its outcome. If the server
// rejected a statement (nothing was committed) a group of several is placed
// again one by one, so one bad request never fails its neighbours.
func (s *Store) placeGroup(group []*placeCall) {
	live := group[:0:0]
	for _, c := range group {
		if err := c.ctx.Err(); err != nil {
			c.done <- placeResult{err: fmt.Errorf("place order: %w", err)}
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), placeTimeout)
	err := s.commitGroup(ctx, live)
	cancel()
	var pgErr *pgconn.PgError
	if err != nil && len(live) > 1 && errors.As(err, &pgErr) {
		for _, c := range live {
			s.placeGroup([]*placeCall{c})
		}
		return
	}
	wrote := false
	for _, c := range live {
		r := placeResult{res: c.res, err: c.err}
		switch {
		case err != nil:
			r = placeResult{err: fmt.Errorf("place order: %w", err)}
		case r.err == nil && !r.res.Replayed:
			wrote = true
		}
		c.done <- r
	}
	if wrote {
		s.wake()
	}
}

// commitGroup runs the group's transaction in two round trips
// (postgres.InBatchedTx): BEGIN, the locks and the look-ups (the keys, and
// the menu rows of every line of the group with one statement); then the
// inserts and COMMIT. Each call's own outcome (in flight, reused, replayed,
// a line the menu refuses, a response it could not render) is left in its
// res and err; the error returned is the transaction's.
func (s *Store) commitGroup(ctx context.Context, group []*placeCall) error {
	locks := make([]string, len(group))
	customers, keys := make([]string, len(group)), make([]string, len(group))
	var lineRestaurants, lineSKUs []string
	for i, c := range group {
		locks[i], customers[i], keys[i] = lockKey(c.req.CustomerID, c.key), c.req.CustomerID, c.key
		for _, l := range c.lines {
			lineRestaurants, lineSKUs = append(lineRestaurants, c.req.RestaurantID), append(lineSKUs, l.SKU)
		}
	}
	return postgres.InBatchedTx(ctx, s.db, func(b *pgx.Batch) {
		// A batch's statements run in order, each with its own snapshot,
		// so the look-up sees a record committed by whoever held a lock
		// before.
		b.Queue(`SELECT i, pg_try_advisory_xact_lock(hashtextextended(k, 0))
			FROM unnest($1::text[]) WITH ORDINALITY AS t (k, i)`, locks)
		b.Queue(`SELECT t.i, k.request_hash, k.status_code, k.response_body, k.location
			FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t (customer_id, key, i)
			JOIN idempotency_keys k ON k.customer_id = t.customer_id AND k.key = t.key AND k.expires_at > now()`,
			customers, keys)
		// The menu as this transaction sees it prices the order: no lock,
		// since a menu replaced a moment later is simply later.
		b.Queue(`SELECT t.i, m.name, m.price_cents, m.available
			FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t (restaurant_id, sku, i)
			JOIN menu_items m ON m.restaurant_id = t.restaurant_id AND m.sku = t.sku`,
			lineRestaurants, lineSKUs)
	}, func(results pgx.BatchResults, b *pgx.Batch) error {
		locked := make([]bool, len(group))
		var i int
		var ok bool
		rows, _ := results.Query()
		if _, err := pgx.ForEachRow(rows, []any{&i, &ok}, func() error { locked[i-1] = ok; return nil }); err != nil {
			return fmt.Errorf("lock idempotency keys: %w", err)
		}
		found := make([]*savedResponse, len(group))
		hashes := make([][]byte, len(group))
		var hash []byte
		var saved savedResponse
		rows, _ = results.Query()
		if _, err := pgx.ForEachRow(rows, []any{&i, &hash, &saved.Status, &saved.Body, &saved.Location}, func() error {
			found[i-1], hashes[i-1] = &savedResponse{Status: saved.Status, Body: saved.Body, Location: saved.Location, Replayed: true}, hash
			return nil
		}); err != nil {
			return fmt.Errorf("look up idempotency keys: %w", err)
		}
		menu := make([]menuItem, len(lineSKUs))
		var m menuItem
		rows, _ = results.Query()
		if _, err := pgx.ForEachRow(rows, []any{&i, &m.Name, &m.PriceCents, &m.Available}, func() error {
			m.Listed = true
			menu[i-1] = m
			return nil
		}); err != nil {
			return fmt.Errorf("look up menu items: %w", err)
		}
		w := groupWrites{expires: time.Now().Add(s.KeyTTL)}
		first := make(map[string]bool, len(group))
		for n, c := range group {
			lines := menu[:len(c.lines)]
			menu = menu[len(c.lines):]
			switch {
			case !locked[n] || first[locks[n]]:
				c.err = ErrKeyInFlight
			case found[n] != nil && !bytes.Equal(hashes[n], c.req.fingerprint()):
				c.err = ErrKeyReused
			case found[n] != nil:
				c.res = *found[n]
			default:
				c.err = w.add(c, lines)
			}
			first[locks[n]] = true
		}
		w.queue(b)
		return nil
	})
}

// groupWrites gathers a group's new orders into one insert per table, the
// arguments of each row after the last's (postgres.Values).
type groupWrites struct {
	n                     int // orders
	orders, history, keys []any
	outbox                outbox.Rows
	expires               time.Time // the idempotency records'
}

// add prices c's order from what the menu says of its lines, renders its
// response and gathers its rows.
func (w *groupWrites) add(c *placeCall, menu []menuItem) error {
	o := c.order
	var err error
	if o.Items, o.TotalCents, err = price(c.lines, menu); err != nil {
		return err
	}
	body, err := c.respond(o)
	if err != nil {
		return fmt.Errorf("place order: %w", err)
	}
	placed := events.Placed{CustomerID: o.CustomerID, RestaurantID: o.RestaurantID, Email: o.Email,
		Items: o.Items, TotalCents: o.TotalCents, DeliveryAddress: o.DeliveryAddress}
	if _, err := w.outbox.Add(c.ctx, events.OrderPlaced, o.ID, o.CreatedAt, placed); err != nil {
		return fmt.Errorf("place order: %w", err)
	}
	items, _ := json.Marshal(o.Items)
	addr, _ := json.Marshal(o.DeliveryAddress)
	c.res = savedResponse{Status: 201, Body: body, Location: "/v1/orders/" + o.ID}
	w.n++
	w.orders = append(w.orders, o.ID, o.CustomerID, o.RestaurantID, o.Email, items, addr, o.TotalCents, o.Status, o.CreatedAt)
	w.history = append(w.history, o.ID, o.Status, o.CreatedAt)
	w.keys = append(w.keys, c.req.CustomerID, c.key, c.req.fingerprint(), body, c.res.Location, w.expires)
	return nil
}

// The rows of a group's inserts (postgres.Values), and how many parameters
// each takes.
const (
	orderRow, orderWidth     = "($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)", 9
	historyRow, historyWidth = "($1, $2, $3)", 3
	keyRow, keyWidth         = "($1, $2, $3, 201, $4, $5, $6)", 6
)

// queue queues the group's inserts on b; nothing when no order is new.
func (w *groupWrites) queue(b *pgx.Batch) {
	if w.n == 0 {
		return
	}
	b.Queue(`INSERT INTO orders (id, customer_id, restaurant_id, email, items, delivery_address, total_cents, status, created_at, updated_at)
		VALUES `+postgres.Values(orderRow, orderWidth, w.n), w.orders...)
	b.Queue(`INSERT INTO order_status_history (order_id, status, at) VALUES `+postgres.Values(historyRow, historyWidth, w.n)+
		` ON CONFLICT DO NOTHING`, w.history...)
	w.outbox.Queue(b)
	// An expired record for the same key is replaced; a live one cannot
	// exist here, since the look-up found none and the lock is held.
	b.Queue(`INSERT INTO idempotency_keys (customer_id, key, request_hash, status_code, response_body, location, expires_at)
		VALUES `+postgres.Values(keyRow, keyWidth, w.n)+`
		ON CONFLICT (customer_id, key) DO UPDATE SET request_hash = excluded.request_hash, status_code = excluded.status_code,
			response_body = excluded.response_body, location = excluded.location, created_at = now(), expires_at = excluded.expires_at`,
		w.keys...)
}
