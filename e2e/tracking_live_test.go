package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/token"
)

// liveMsg is a message on a customer's tracking socket.
type liveMsg struct {
	Type    string  `json:"type"`
	Status  string  `json:"status"`
	RiderID string  `json:"rider_id"`
	Seq     int64   `json:"seq"`
	Lat     float64 `json:"lat"`
	Lng     float64 `json:"lng"`
}

// trackSocket is a customer's tracking socket, read all along by a
// goroutine (a read that times out would close it).
type trackSocket struct {
	t    testing.TB
	c    *websocket.Conn
	msgs chan liveMsg
	err  error // why msgs closed
}

func trackURL(baseURL, orderID, tok string) string {
	return strings.Replace(baseURL, "http", "ws", 1) + "/v1/orders/" + orderID + "/track?token=" + tok
}

func openTrack(t testing.TB, baseURL, orderID, tok string) *trackSocket {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, trackURL(baseURL, orderID, tok), nil)
	if err != nil {
		t.Fatalf("open tracking socket: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	s := &trackSocket{t: t, c: c, msgs: make(chan liveMsg, 10_000)}
	go func() {
		defer close(s.msgs)
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				s.err = err
				return
			}
			var m liveMsg
			if err := json.Unmarshal(data, &m); err != nil {
				s.err = err
				return
			}
			s.msgs <- m
		}
	}()
	return s
}

// nextLocation returns the next fix, skipping statuses; ok is false when
// none came within.
func (s *trackSocket) nextLocation(within time.Duration) (liveMsg, bool) {
	s.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, open := <-s.msgs:
			if !open {
				s.t.Fatalf("tracking socket closed: %v", s.err)
			}
			if m.Type == "location" {
				return m, true
			}
		case <-deadline:
			return liveMsg{}, false
		}
	}
}

// rider is a rider assigned to an order through the orders API.
type rider struct {
	ID, Token string
	seq       int64
}

// assignedOrder places an order, assigns it a new rider, and has it paid,
// accepted by its restaurant and picked up by the rider: an order whose
// customer follows its rider.
func assignedOrder(t testing.TB) (order, *rider) {
	t.Helper()
	o := placeOrder(t, newKey(), orderJSON("c-live-"+uuid.NewString(), "r-live", 700))
	r := &rider{ID: "rider-" + uuid.NewString()[:8]}
	r.Token = as(t, token.AudienceRider, r.ID)
	assignRider(t, o.ID, r.ID)
	pickUp(t, o.ID, "r-live", r)
	return o, r
}

// pickUp waits until the order is paid, has its restaurant accept it and
// its rider pick it up.
func pickUp(t testing.TB, orderID, restaurant string, r *rider) {
	t.Helper()
	waitPaid(t, 20*time.Second, orderID)
	if code := move(t, as(t, token.AudienceRestaurant, restaurant), orderID, "accepted"); code != http.StatusOK {
		t.Fatalf("accept = %d", code)
	}
	if code := move(t, r.Token, orderID, "picked_up"); code != http.StatusOK {
		t.Fatalf("pick up = %d", code)
	}
}

// post sends the rider's fix with the given seq to a tracking instance.
func (r *rider) post(t testing.TB, baseURL string, seq int64) int {
	t.Helper()
	body := fmt.Sprintf(`{"lat":%.5f,"lng":72.84,"heading":0,"speed_kmh":18,"seq":%d,"ts":%q}`,
		19.0+float64(seq%1000)/10000, seq, time.Now().UTC().Format(time.RFC3339Nano))
	code, _, _ := do(t, http.MethodPost, baseURL+"/v1/riders/"+r.ID+"/location",
		map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + r.Token}, body)
	return code
}

// next posts the rider's next fix and returns its seq.
func (r *rider) next(t testing.TB, baseURL string) int64 {
	t.Helper()
	r.seq++
	if code := r.post(t, baseURL, r.seq); code != http.StatusAccepted {
		t.Fatalf("post fix %d = %d", r.seq, code)
	}
	return r.seq
}

// mustFirstFix posts fixes until one reaches s: the assignment reaches
// tracking through its queue, so the first fixes may find no one watching.
func mustFirstFix(t testing.TB, s *trackSocket, baseURL string, r *rider) int64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		r.next(t, baseURL)
		if m, ok := s.nextLocation(300 * time.Millisecond); ok {
			return m.Seq
		}
	}
	t.Fatal("no fix reached the customer")
	return 0
}

// TestTrackingLive drives one order through the tracking service of the
// running stack, as a rider app and a customer app would: a posted fix
// reaches the customer, stale and out-of-order fixes never do, a wrong
// token is refused, and a customer who reconnects gets the latest position
// at once and nothing older.
func TestTrackingLive(t *testing.T) {
	tracking := base(ports.Tracking)
	o, r := assignedOrder(t)

	t.Run("ErrWrongToken", func(t *testing.T) {
		other := placeOrder(t, newKey(), orderJSON("c-live-"+uuid.NewString(), "r-live", 700))
		for _, tt := range []struct {
			name, tok string
			want      int
		}{
			{"none", "", http.StatusUnauthorized},
			{"garbage", "abc", http.StatusUnauthorized},
			{"another order's", other.TrackingToken, http.StatusForbidden},
			{"a rider's", r.Token, http.StatusForbidden},
		} {
			code, h, _ := do(t, http.MethodGet, tracking+"/v1/orders/"+o.ID+"/track?token="+tt.tok, nil, "")
			if code != tt.want || !strings.HasPrefix(h.Get("Content-Type"), "application/problem+json") {
				t.Errorf("%s token: %d %s, want a %d problem", tt.name, code, h.Get("Content-Type"), tt.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, resp, err := websocket.Dial(ctx, trackURL(tracking, o.ID, tt.tok), nil)
			cancel()
			if err == nil || resp == nil || resp.StatusCode != tt.want {
				t.Errorf("%s token: the upgrade was not refused with %d (%v)", tt.name, tt.want, err)
			}
		}
	})

	s := openTrack(t, tracking, o.ID, o.TrackingToken)
	last := mustFirstFix(t, s, tracking, r)

	t.Run("StaleAndOutOfOrderNeverDelivered", func(t *testing.T) {
		// Sent newest first: only the first can be delivered.
		base := r.seq
		for _, d := range []int64{5, 3, 4, 1, 2} {
			if code := r.post(t, tracking, base+d); code != http.StatusAccepted {
				t.Fatalf("post = %d", code)
			}
		}
		r.seq = base + 5
		// And one far older than anything sent.
		if code := r.post(t, tracking, 1); code != http.StatusAccepted {
			t.Fatalf("post = %d", code)
		}
		newest := r.next(t, tracking)
		for last < newest {
			m, ok := s.nextLocation(10 * time.Second)
			if !ok {
				t.Fatalf("fix %d never arrived (last %d)", newest, last)
			}
			if m.Seq <= last {
				t.Fatalf("got seq %d after %d", m.Seq, last)
			}
			if m.Seq < base+5 && m.Seq > base {
				t.Fatalf("got seq %d, sent after seq %d", m.Seq, base+5)
			}
			last = m.Seq
		}
	})

	t.Run("ReconnectGetsLatestAndNothingOlder", func(t *testing.T) {
		s.c.CloseNow()
		// While the customer is away the rider moves on.
		for range 3 {
			r.next(t, tracking)
			time.Sleep(150 * time.Millisecond)
		}
		newest := r.seq
		db := mustDB(t)
		eventually(t, 10*time.Second, "latest position stored", func() error {
			var seq int64
			if err := db.QueryRow(context.Background(), "SELECT coalesce(max(seq), 0) FROM rider_fixes WHERE order_id = $1 AND rider_id = $2", o.ID, r.ID).Scan(&seq); err != nil {
				return err
			}
			if seq != newest {
				return fmt.Errorf("stored seq %d, want %d", seq, newest)
			}
			return nil
		})
		again := openTrack(t, tracking, o.ID, o.TrackingToken)
		m, ok := again.nextLocation(5 * time.Second)
		if !ok || m.Seq != newest {
			t.Fatalf("first fix after reconnecting: %+v (ok %v), want seq %d at once", m, ok, newest)
		}
		if extra, ok := again.nextLocation(time.Second); ok {
			t.Fatalf("after the latest position the customer got %+v", extra)
		}
		// And the live feed goes on.
		seq := r.next(t, tracking)
		if m, ok := again.nextLocation(10 * time.Second); !ok || m.Seq != seq {
			t.Fatalf("live fix %+v (ok %v), want seq %d", m, ok, seq)
		}
	})
}

// startTracking starts one more tracking instance, built from this tree,
// on port, with env over the suite's; its output is shown if the test fails.
func startTracking(t *testing.T, port int, env map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	wd, _ := os.Getwd()
	root, err := stack.ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	svc := stack.Service{Name: "tracking", Pkg: "./services/tracking", Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	bin := t.TempDir()
	if err := stack.Build(ctx, root, bin, []stack.Service{svc}); err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"TOKEN_SECRET": e2eSecret, "ADMIN_TOKEN": e2eAdminToken, "LOG_FORMAT": "json"}
	for k, v := range env {
		all[k] = v
	}
	out := &syncBuffer{}
	p := stack.NewProc(svc, bin, stack.Environ(all), out)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("tracking on :%d said:\n%s", port, out.String())
		}
	})
	if err := p.WaitReady(ctx); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	return "http://" + svc.Addr
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// binding is a binding of the locations exchange, per the management API.
type binding struct {
	Destination string `json:"destination"`
	RoutingKey  string `json:"routing_key"`
}

// locationQueues returns the queues bound to the locations exchange with key.
func locationQueues(t testing.TB, key string) []string {
	t.Helper()
	var bs []binding
	if code := management(t, http.MethodGet, "/exchanges/%2F/locations/bindings/source", nil, &bs); code != http.StatusOK {
		t.Fatalf("bindings of locations: %d", code)
	}
	var qs []string
	for _, b := range bs {
		if b.RoutingKey == key {
			qs = append(qs, b.Destination)
		}
	}
	return qs
}

// TestTrackingTwoRelays runs a second tracking instance beside the stack's:
// each serves its own customers from the one feed, and each instance's queue
// is bound only to the riders its own customers watch, while they watch.
func TestTrackingTwoRelays(t *testing.T) {
	one := base(ports.Tracking)
	two := startTracking(t, ports.Tracking+100, nil)
	o1, r1 := assignedOrder(t)
	o2, r2 := assignedOrder(t)
	c1 := openTrack(t, one, o1.ID, o1.TrackingToken)
	c2 := openTrack(t, two, o2.ID, o2.TrackingToken)
	// Each rider posts to the instance its customer is not on: the feed,
	// not the ingest, brings fixes to the customer.
	mustFirstFix(t, c1, two, r1)
	mustFirstFix(t, c2, one, r2)

	q1, q2 := locationQueues(t, "rider."+r1.ID), locationQueues(t, "rider."+r2.ID)
	if len(q1) != 1 || len(q2) != 1 || q1[0] == q2[0] {
		t.Fatalf("rider.%s bound to %v, rider.%s to %v: want one queue each, not the same", r1.ID, q1, r2.ID, q2)
	}
	for range 5 {
		r1.next(t, two)
		r2.next(t, one)
	}
	for _, c := range []struct {
		s     *trackSocket
		rider *rider
	}{{c1, r1}, {c2, r2}} {
		for {
			m, ok := c.s.nextLocation(10 * time.Second)
			if !ok {
				t.Fatalf("customer of %s: fix %d never arrived", c.rider.ID, c.rider.seq)
			}
			if m.RiderID != c.rider.ID {
				t.Fatalf("customer of %s got a fix of %s", c.rider.ID, m.RiderID)
			}
			if m.Seq == c.rider.seq {
				break
			}
		}
	}

	// The last watcher gone, the binding goes too.
	c2.c.Close(websocket.StatusNormalClosure, "")
	eventually(t, 10*time.Second, "rider."+r2.ID+" unbound", func() error {
		if qs := locationQueues(t, "rider."+r2.ID); len(qs) != 0 {
			return fmt.Errorf("still bound to %v", qs)
		}
		return nil
	})
}

// TestTrackingStalledCustomer: a customer whose app stops reading (its
// receive buffer full) neither slows another customer of the same rider on
// the same instance nor the rider; the server drops the stalled one.
func TestTrackingStalledCustomer(t *testing.T) {
	// An instance of its own, without a per-rider rate limit, so the rider
	// can send enough to fill the stalled customer's socket quickly.
	inst := startTracking(t, ports.Tracking+101, map[string]string{"TRACKING_RIDER_RATE": "100000"})
	o, r := assignedOrder(t)
	active := openTrack(t, inst, o.ID, o.TrackingToken)
	mustFirstFix(t, active, inst, r)

	// The stalled customer: a tiny receive buffer, and never a read.
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stalled, _, err := websocket.Dial(ctx, trackURL(inst, o.ID, o.TrackingToken),
		&websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}})
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.CloseNow()

	// The rider streams 4,000 fixes over its socket, about 1,000 a second:
	// slow enough that the customers' writers send most of them rather
	// than only the newest (a fix waiting to be written is replaced by a
	// newer one), so several hundred kilobytes head for each customer, far
	// more than the stalled one's socket buffers take. A hub writing to its
	// customers in line would stall on the first.
	rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
	defer rcancel()
	rs, _, err := websocket.Dial(rctx, strings.Replace(inst, "http", "ws", 1)+"/v1/riders/"+r.ID+"/ws?token="+r.Token, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.CloseNow()
	errFrames := rs.CloseRead(rctx)
	for i := range 4000 {
		if i%10 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		r.seq++
		fix := fmt.Sprintf(`{"lat":19.%04d,"lng":72.84,"heading":0,"speed_kmh":18,"seq":%d,"ts":%q}`,
			r.seq%10000, r.seq, time.Now().UTC().Format(time.RFC3339Nano))
		if err := rs.Write(rctx, websocket.MessageText, []byte(fix)); err != nil {
			t.Fatalf("rider socket: %v", err)
		}
	}
	if errFrames.Err() != nil {
		t.Fatal("the server closed the rider's socket")
	}
	newest := r.seq
	for {
		m, ok := active.nextLocation(10 * time.Second)
		if !ok {
			t.Fatalf("the active customer never got fix %d", newest)
		}
		if m.Seq == newest {
			break
		}
	}
	// The server notices the stalled customer and lets it go.
	eventually(t, 30*time.Second, "stalled customer dropped", func() error {
		var st struct {
			Dropped int `json:"customers_dropped"`
		}
		code, _, b := do(t, http.MethodGet, inst+"/stats", bearer(e2eAdminToken), "")
		if code != http.StatusOK || json.Unmarshal(b, &st) != nil {
			return fmt.Errorf("stats: %d %s", code, b)
		}
		if st.Dropped != 1 {
			return fmt.Errorf("customers dropped: %d; stats %s", st.Dropped, b)
		}
		return nil
	})
}
