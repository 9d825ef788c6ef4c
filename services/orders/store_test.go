package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

// tripConn counts round trips on a database connection: a round trip
// begins with the first write after a read.
type tripConn struct {
	net.Conn
	mu      sync.Mutex
	trips   int
	reading bool
}

func (c *tripConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.reading || c.trips == 0 {
		c.trips++
	}
	c.reading = false
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *tripConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.reading = true
		c.mu.Unlock()
	}
	return n, err
}

func (c *tripConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trips
}

// mustCountedPool returns a pool of one connection whose round trips conn
// counts. It never pings on acquire, which would add a round trip of the
// pool's, not the caller's.
func mustCountedPool(tb testing.TB) (*pgxpool.Pool, *tripConn) {
	tb.Helper()
	testenv.MustDB(tb) // creates and migrates the database
	cfg, err := pgxpool.ParseConfig(testenv.Env.DatabaseURL())
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 1
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	var conn *tripConn
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if conn != nil {
			tb.Error("the pool opened a second connection")
		}
		conn = &tripConn{Conn: c}
		return conn, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	if err := pool.Ping(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return pool, conn
}

// mustTestMenu gives the restaurant orderBody orders from its menu.
func mustTestMenu(tb testing.TB, store *Store) {
	tb.Helper()
	if err := store.ReplaceMenu(context.Background(), testMenu); err != nil {
		tb.Fatal(err)
	}
}

// testMenu is the menu of orderBody's restaurant.
var testMenu = Menu{RestaurantID: "r-1", Items: []MenuItem{
	{SKU: "biryani", Name: "Chicken biryani", PriceCents: 450, Available: true},
	{SKU: "lassi", Name: "Mango lassi", PriceCents: 120, Available: false},
	{SKU: "chutney", Name: "Chutney", PriceCents: 0, Available: true},
}}

// newPlace returns a valid request for customer, its lines and the order
// the handler would make of it.
func newPlace(tb testing.TB, customer string) (placeRequest, []line, Order) {
	tb.Helper()
	var req placeRequest
	if err := json.Unmarshal([]byte(orderBody(customer)), &req); err != nil {
		tb.Fatal(err)
	}
	lines, addr, err := req.validate()
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	return req, lines, Order{ID: uuid.NewString(), Status: events.StatusPlaced, CustomerID: req.CustomerID, RestaurantID: req.RestaurantID,
		Email: req.Email, DeliveryAddress: addr, CreatedAt: now, UpdatedAt: now}
}

func render(o Order) ([]byte, error) { return json.Marshal(o) }

// TestPlaceRoundTrips counts Place's round trips to the database: two,
// whether it places the order, replays it or refuses the key.
func TestPlaceRoundTrips(t *testing.T) {
	pool, conn := mustCountedPool(t)
	var woken int
	store := NewStore(pool, func() { woken++ })
	mustTestMenu(t, NewStore(testenv.MustDB(t), nil))
	ctx := context.Background()
	// The first use of a statement on a connection prepares it, once:
	// one more round trip that a pooled connection pays only then.
	warm, lines, o := newPlace(t, uuid.NewString())
	if _, err := store.Place(ctx, "warm-up", warm, lines, o, render); err != nil {
		t.Fatal(err)
	}
	woken = 0

	trips := func(t *testing.T, do func()) {
		t.Helper()
		before := conn.count()
		do()
		if n := conn.count() - before; n != 2 {
			t.Errorf("%d round trips, want 2", n)
		}
	}
	key := uuid.NewString()
	req, lines, o := newPlace(t, uuid.NewString())

	var first []byte // the first answer
	t.Run("OK", func(t *testing.T) {
		trips(t, func() {
			res, err := store.Place(ctx, key, req, lines, o, render)
			if err != nil || res.Status != 201 || res.Replayed {
				t.Fatalf("Place = %+v, %v", res, err)
			}
			first = res.Body
		})
		var got Order
		if err := json.Unmarshal(first, &got); err != nil || got.TotalCents != 900 || len(got.Items) != 1 ||
			got.Items[0] != (events.Item{SKU: "biryani", Name: "Chicken biryani", Quantity: 2, UnitPriceCents: 450}) {
			t.Fatalf("answer %s (%v): want the menu's prices and name", first, err)
		}
		if woken != 1 {
			t.Errorf("relay woken %d times, want 1", woken)
		}
	})

	t.Run("Replay", func(t *testing.T) {
		trips(t, func() {
			res, err := store.Place(ctx, key, req, lines, o, render)
			if err != nil || !res.Replayed || string(res.Body) != string(first) {
				t.Fatalf("Place = %+v, %v", res, err)
			}
		})
		if woken != 1 {
			t.Errorf("relay woken %d times after a replay, want 1", woken)
		}
	})

	t.Run("ErrKeyReused", func(t *testing.T) {
		other, lines, o := newPlace(t, req.CustomerID)
		other.Email = "someone.else@example.com"
		trips(t, func() {
			if _, err := store.Place(ctx, key, other, lines, o, render); !errors.Is(err, ErrKeyReused) {
				t.Fatalf("err = %v, want ErrKeyReused", err)
			}
		})
	})

	// The menu refuses a line: the request fails alone, nothing is stored,
	// and it cost the same two round trips.
	for _, tt := range []struct {
		name   string
		lines  []line
		reason string // "" for ErrZeroTotal
	}{
		{"ErrUnlisted", []line{{SKU: "biryani", Quantity: 1}, {SKU: "pizza", Quantity: 1}}, lineUnlisted},
		{"ErrUnavailable", []line{{SKU: "lassi", Quantity: 1}}, lineUnavailable},
		{"ErrPriceChanged", []line{{SKU: "biryani", Quantity: 1, Shown: ptr(int64(400))}}, linePriceChanged},
		{"ErrZeroTotal", []line{{SKU: "chutney", Quantity: 3}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _, o := newPlace(t, uuid.NewString())
			trips(t, func() {
				_, err := store.Place(ctx, uuid.NewString(), req, tt.lines, o, render)
				var le *LineError
				switch {
				case tt.reason == "" && !errors.Is(err, ErrZeroTotal):
					t.Fatalf("err = %v, want ErrZeroTotal", err)
				case tt.reason != "" && (!errors.As(err, &le) || le.Reason != tt.reason || le.Index != len(tt.lines)-1):
					t.Fatalf("err = %v, want a LineError (%s) on the last line", err, tt.reason)
				}
			})
			if _, err := store.Get(ctx, o.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("order stored anyway: %v", err)
			}
		})
	}

	t.Run("ErrKeyInFlight", func(t *testing.T) {
		req, lines, o := newPlace(t, uuid.NewString())
		key := uuid.NewString()
		// Another request holds the key's lock: Place's own, taken in a
		// transaction of its own that stays open.
		holder, err := testenv.MustDB(t).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Rollback(ctx)
		var locked bool
		err = holder.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
			lockKey(req.CustomerID, key)).Scan(&locked)
		if err != nil || !locked {
			t.Fatalf("lock: %v %v", locked, err)
		}
		trips(t, func() {
			if _, err := store.Place(ctx, key, req, lines, o, render); !errors.Is(err, ErrKeyInFlight) {
				t.Fatalf("err = %v, want ErrKeyInFlight", err)
			}
		})
	})

	// Every early return ended its transaction: the one connection is
	// still the pool's and outside a transaction.
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if s := c.Conn().PgConn().TxStatus(); s != 'I' || c.Conn().PgConn().Conn() != net.Conn(conn) {
		t.Fatalf("connection status %q, the first connection: %v", s, c.Conn().PgConn().Conn() == net.Conn(conn))
	}
}

// TestPlaceGroups places many orders at once on a pool of one connection:
// they share a few transactions (the group commit), every order is stored
// once with its outbox event, and two requests with one key give one order.
func TestPlaceGroups(t *testing.T) {
	pool, conn := mustCountedPool(t)
	store := NewStore(pool, nil)
	mustTestMenu(t, NewStore(testenv.MustDB(t), nil))
	ctx := context.Background()
	warm, lines, o := newPlace(t, uuid.NewString())
	if _, err := store.Place(ctx, "warm-up", warm, lines, o, render); err != nil {
		t.Fatal(err)
	}
	// Hold the connection while the requests arrive, so they all wait.
	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	type result struct {
		res savedResponse
		err error
	}
	results := make([]result, n+2)
	orders := make([]Order, n+2)
	var wg sync.WaitGroup
	for i := range n {
		req, lines, o := newPlace(t, uuid.NewString())
		if i%10 == 9 {
			// A line the menu does not list fails its request alone, in
			// the group, not the group.
			lines = []line{{SKU: "pizza", Quantity: 1}}
		}
		orders[i] = o
		wg.Go(func() { results[i].res, results[i].err = store.Place(ctx, uuid.NewString(), req, lines, o, render) })
	}
	twinKey := uuid.NewString()
	twin, lines, _ := newPlace(t, uuid.NewString())
	for i := n; i < n+2; i++ {
		_, _, o := newPlace(t, twin.CustomerID)
		orders[i] = o
		wg.Go(func() { results[i].res, results[i].err = store.Place(ctx, twinKey, twin, lines, o, render) })
	}
	waitStill(t, func() int {
		store.placing.mu.Lock()
		defer store.placing.mu.Unlock()
		return len(store.placing.pending)
	})
	before := conn.count()
	held.Release()
	wg.Wait()
	if trips := conn.count() - before; trips > 2*(placeCommitters+2) {
		t.Errorf("%d round trips for %d orders: not grouped", trips, n+2)
	}
	unlisted := 0
	for i := range n {
		var le *LineError
		switch r := results[i]; {
		case i%10 == 9 && errors.As(r.err, &le) && le.Reason == lineUnlisted:
			unlisted++
		case i%10 == 9 || r.err != nil || r.res.Status != 201 || r.res.Replayed:
			t.Fatalf("order %d: %+v, %v", i, r.res, r.err)
		}
	}
	var created, refused int
	for _, r := range results[n:] {
		switch {
		case r.err == nil && !r.res.Replayed:
			created++
		case errors.Is(r.err, ErrKeyInFlight), r.err == nil && r.res.Replayed:
			refused++
		default:
			t.Fatalf("twin: %+v, %v", r.res, r.err)
		}
	}
	if created != 1 || refused != 1 {
		t.Fatalf("twins: %d created, %d refused or replayed; want 1 and 1", created, refused)
	}
	ids := make([]string, len(orders))
	for i, o := range orders {
		ids[i] = o.ID
	}
	var stored, events int
	err = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])),
		(SELECT count(*) FROM outbox WHERE order_id = ANY($1::uuid[]) AND routing_key = 'order.placed')`, ids).Scan(&stored, &events)
	if err != nil {
		t.Fatal(err)
	}
	if want := n + 1 - unlisted; stored != want || events != want {
		t.Fatalf("%d orders and %d order.placed events stored, want %d of each", stored, events, want)
	}
}

// waitStill waits until f's value has stayed the same for 100 ms.
func waitStill(tb testing.TB, f func() int) {
	tb.Helper()
	last, since := f(), time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if v := f(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) > 100*time.Millisecond {
			return
		}
	}
	tb.Fatal("still changing after 5 s")
}
