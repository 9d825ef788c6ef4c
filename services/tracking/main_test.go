package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

const secret = "tracking-test-secret-of-32-bytes!"

func testSigner() *token.Signer { return token.NewSigner([]byte(secret)) }

// customer is a tracking socket the test reads. A goroutine reads it all
// along: a read that times out would close the socket.
type customer struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan message
	err  error // why msgs closed
}

func mustDialCustomer(t *testing.T, base, orderID, tok string) *customer {
	t.Helper()
	cu := &customer{t: t, c: mustDialSocket(t, base, orderID, tok), msgs: make(chan message, 1000)}
	go func() {
		defer close(cu.msgs)
		for {
			_, data, err := cu.c.Read(context.Background())
			if err != nil {
				cu.err = err
				return
			}
			var m message
			if err := json.Unmarshal(data, &m); err != nil {
				cu.err = err
				return
			}
			cu.msgs <- m
		}
	}()
	return cu
}

// mustDialSocket opens a customer socket nobody reads.
func mustDialSocket(t *testing.T, base, orderID, tok string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/v1/orders/"+orderID+"/track?token="+tok, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

type message struct {
	Type        string       `json:"type"`
	Status      string       `json:"status"`
	At          time.Time    `json:"at"`
	RiderID     string       `json:"rider_id"`
	Seq         int64        `json:"seq"`
	Lat         float64      `json:"lat"`
	Destination *Destination `json:"destination"`
}

// next returns the next message, failing after within.
func (cu *customer) next(within time.Duration) message {
	cu.t.Helper()
	m, ok, timedOut := cu.poll(within)
	switch {
	case timedOut:
		cu.t.Fatalf("no message within %v", within)
	case !ok:
		cu.t.Fatalf("socket closed: %v", cu.err)
	}
	return m
}

// poll waits up to within for a message.
func (cu *customer) poll(within time.Duration) (m message, ok, timedOut bool) {
	select {
	case m, ok = <-cu.msgs:
		return m, ok, false
	case <-time.After(within):
		return message{}, false, true
	}
}

// nextOf skips messages of other types and returns the next of typ.
func (cu *customer) nextOf(typ string, within time.Duration) message {
	cu.t.Helper()
	for {
		if m := cu.next(within); m.Type == typ {
			return m
		}
	}
}

// get sends a GET with a bearer token and returns the status and body.
func get(t *testing.T, url, tok string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

func fixJSON(seq int64, lat float64) string {
	return fmt.Sprintf(`{"lat":%g,"lng":72.84,"heading":90,"speed_kmh":20,"seq":%d,"ts":%q}`, lat, seq, time.Now().UTC().Format(time.RFC3339Nano))
}

func postFix(t *testing.T, base, rider, tok string, seq int64) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/riders/"+rider+"/location", strings.NewReader(fixJSON(seq, 19+float64(seq)/1000)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// mustOrder stores a paid order as the orders service would (its row, its
// history and its outbox events, one transaction a change), assigned to
// rider unless that is "", and returns its id; announce makes one more
// change of it (a status event, or order.rider_assigned).
func mustOrder(t *testing.T, db *pgxpool.Pool, rider string) (orderID string, announce func(key string, data any)) {
	t.Helper()
	orderID = uuid.NewString()
	ctx := context.Background()
	announce = func(key string, data any) {
		t.Helper()
		at := time.Now()
		err := postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			var err error
			switch d := data.(type) {
			case events.RiderAssigned:
				_, err = tx.Exec(ctx, "UPDATE orders SET rider_id = $2, updated_at = $3 WHERE id = $1", orderID, d.RiderID, at)
			case events.StatusChanged:
				_, err = tx.Exec(ctx, `WITH u AS (UPDATE orders SET status = $2, updated_at = $3 WHERE id = $1)
					INSERT INTO order_status_history (order_id, status, at) VALUES ($1, $2, $3)`, orderID, d.Status, at)
			}
			if err != nil {
				return err
			}
			_, err = outbox.Enqueue(ctx, tx, key, orderID, at, data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := json.Marshal(events.Address{Line1: "Dadar West", Lat: 19.02, Lng: 72.84})
	placed := time.Now().Add(-time.Second)
	_, err := db.Exec(ctx, `WITH o AS (
			INSERT INTO orders (id, customer_id, restaurant_id, email, items, delivery_address, total_cents, status, created_at, updated_at)
			VALUES ($1, 'c1', 'r1', 'c1@example.com', '[]', $2, 100, 'placed', $3, $3))
		INSERT INTO order_status_history (order_id, status, at) VALUES ($1, 'placed', $3)`, orderID, addr, placed)
	if err != nil {
		t.Fatal(err)
	}
	announce(events.OrderPaid, events.StatusChanged{Status: events.StatusPaid})
	if rider != "" {
		announce(events.OrderRiderAssigned, events.RiderAssigned{RiderID: rider})
	}
	return orderID, announce
}

func TestTracking(t *testing.T) {
	// A schema of its own: the order's events it writes must reach no
	// other test's relay (they would go out as a paid order never placed).
	db, dbURL := testenv.MustOwnSchemaURL(t)
	env := map[string]string{"TOKEN_SECRET": secret, "TRACKING_RIDER_RATE": "1000", "DATABASE_URL": dbURL}
	one := testenv.MustRun(t, run, env)
	two := testenv.MustRun(t, run, env)
	signer := testSigner()

	rider := "rider-" + uuid.NewString()[:8]
	orderID, announce := mustOrder(t, db, rider)
	trackTok, _ := signer.Tracking(orderID, time.Hour)
	riderTok, _ := signer.Rider(rider, time.Hour)

	t.Run("ErrWrongTokens", func(t *testing.T) {
		other, _ := signer.Tracking(uuid.NewString(), time.Hour)
		expired, _ := signer.Tracking(orderID, -time.Minute)
		foreign, _ := token.NewSigner([]byte("another secret")).Tracking(orderID, time.Hour)
		for _, tt := range []struct {
			name, tok string
			want      int
		}{
			{"none", "", http.StatusUnauthorized},
			{"garbage", "x.y.z", http.StatusUnauthorized},
			{"expired", expired, http.StatusUnauthorized},
			{"other secret", foreign, http.StatusUnauthorized},
			{"other order", other, http.StatusForbidden},
			{"rider token", riderTok, http.StatusForbidden},
		} {
			resp, err := http.Get(one + "/v1/orders/" + orderID + "/track?token=" + tt.tok)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s: %d, want %d", tt.name, resp.StatusCode, tt.want)
			}
		}
		otherRider, _ := signer.Rider("someone-else", time.Hour)
		if code := postFix(t, one, rider, otherRider, 1); code != http.StatusForbidden {
			t.Errorf("another rider's token: %d, want 403", code)
		}
		if code := postFix(t, one, rider, trackTok, 1); code != http.StatusForbidden {
			t.Errorf("a tracking token as a rider token: %d, want 403", code)
		}
		if code := postFix(t, one, rider, "", 1); code != http.StatusUnauthorized {
			t.Errorf("no token: %d, want 401", code)
		}
	})

	a := mustDialCustomer(t, one, orderID, trackTok)
	if m := a.next(5 * time.Second); m.Type != "status" || m.Status != events.StatusPaid || m.Destination == nil || m.Destination.Lat != 19.02 {
		t.Fatalf("first message %+v, want status paid with the destination", m)
	}
	// Assigned but not picked up: where the rider is is not the
	// customer's business yet. (Half a second is time enough for a
	// binding to the rider's fixes, were there one.)
	time.Sleep(500 * time.Millisecond)
	if code := postFix(t, one, rider, riderTok, 1); code != http.StatusAccepted {
		t.Fatalf("POST fix = %d", code)
	}
	if m, ok, _ := a.poll(1500 * time.Millisecond); ok {
		t.Fatalf("before the pick-up the customer got %+v", m)
	}
	announce(events.OrderAccepted, events.StatusChanged{Status: events.StatusAccepted, From: events.StatusPaid})
	announce(events.OrderPickedUp, events.StatusChanged{Status: events.StatusPickedUp, From: events.StatusAccepted})
	for _, want := range []string{events.StatusAccepted, events.StatusPickedUp} {
		if m := a.nextOf("status", 10*time.Second); m.Status != want {
			t.Fatalf("status %+v, want %s", m, want)
		}
	}
	// The relay binds the rider's key as it can: post until a fix gets
	// through.
	seq := int64(1)
	testenv.Eventually(t, 10*time.Second, "a fix after the pick-up", func() bool {
		seq++
		if code := postFix(t, one, rider, riderTok, seq); code != http.StatusAccepted {
			t.Fatalf("POST fix = %d", code)
		}
		m, ok, _ := a.poll(300 * time.Millisecond)
		if ok && (m.Type != "location" || m.RiderID != rider) {
			t.Fatalf("got %+v, want a fix of %s", m, rider)
		}
		return ok
	})

	// Out of order: +2 then +1 then +3; the customer must never see +1.
	base := seq
	for _, d := range []int64{2, 1, 3} {
		if code := postFix(t, one, rider, riderTok, base+d); code != http.StatusAccepted {
			t.Fatalf("POST fix %d = %d", base+d, code)
		}
	}
	for last := base; last < base+3; {
		got := a.nextOf("location", 5*time.Second).Seq
		if got <= last || got == base+1 {
			t.Fatalf("got seq %d after %d", got, last)
		}
		last = got
	}
	seq = base + 3

	// A customer connecting to the other instance, which never saw this
	// rider, gets the stored position at once, and nothing older.
	testenv.Eventually(t, 5*time.Second, "position stored", func() bool {
		f, ok, _ := loadPosition(context.Background(), db, orderID, rider)
		return ok && f.Seq == seq
	})
	t.Run("Path", func(t *testing.T) {
		// Every fix of the rider on this delivery, the one before the
		// pick-up too.
		testenv.Eventually(t, 5*time.Second, "every fix stored", func() bool {
			var n int64
			_ = db.QueryRow(context.Background(), "SELECT count(*) FROM rider_fixes WHERE order_id = $1", orderID).Scan(&n)
			return n == seq
		})
		code, body := get(t, two+"/v1/orders/"+orderID+"/path", trackTok)
		var p Path
		if code != http.StatusOK || json.Unmarshal(body, &p) != nil {
			t.Fatalf("path: %d %s", code, body)
		}
		var seqs []int64
		for _, pt := range p.Points {
			seqs = append(seqs, pt.Seq)
		}
		var want []int64
		for i := int64(1); i <= seq; i++ {
			want = append(want, i)
		}
		if !slices.Equal(seqs, want) || p.Fixes != int(seq) || p.Points[0].RiderID != rider {
			t.Fatalf("path %+v, want seq 1 to %d of %s in order", p, seq, rider)
		}
		if code, body := get(t, two+"/v1/orders/"+orderID+"/path?max=2", trackTok); code != http.StatusOK || !strings.Contains(string(body), `"thinned":true`) {
			t.Fatalf("path of 2 points: %d %s", code, body)
		}
		other, _ := signer.Tracking(uuid.NewString(), time.Hour)
		for _, tt := range []struct {
			name, tok string
			want      int
		}{{"no", "", http.StatusUnauthorized}, {"another order's", other, http.StatusForbidden}, {"the rider's", riderTok, http.StatusForbidden}} {
			if code, _ := get(t, two+"/v1/orders/"+orderID+"/path", tt.tok); code != tt.want {
				t.Errorf("path with %s token: %d, want %d", tt.name, code, tt.want)
			}
		}
	})

	b := mustDialCustomer(t, two, orderID, trackTok)
	if m := b.next(5 * time.Second); m.Type != "status" || m.Status != events.StatusPickedUp {
		t.Fatalf("first message %+v, want the status", m)
	}
	if m := b.next(5 * time.Second); m.Type != "location" || m.Seq != seq {
		t.Fatalf("second message %+v, want the latest position (seq %d)", m, seq)
	}

	// A stalled customer (never reads) does not hold the others back, and
	// the second instance serves its customer from the same feed.
	mustDialSocket(t, one, orderID, trackTok)
	last := seq + 35
	for seq++; seq <= last; seq++ {
		if code := postFix(t, two, rider, riderTok, seq); code != http.StatusAccepted {
			t.Fatalf("POST fix %d = %d", seq, code)
		}
	}
	for _, cu := range []*customer{a, b} {
		var got int64
		for got < last {
			next := cu.nextOf("location", 5*time.Second).Seq
			if next <= got {
				t.Fatalf("seq %d after %d", next, got)
			}
			got = next
		}
	}

	// Delivered, which reaches both instances' customers (each reads the
	// order feed): they stop receiving the rider's whereabouts.
	announce(events.OrderDelivered, events.StatusChanged{Status: events.StatusDelivered, From: events.StatusPickedUp})
	for _, cu := range []*customer{a, b} {
		if m := cu.nextOf("status", 10*time.Second); m.Status != events.StatusDelivered {
			t.Fatalf("status %+v, want delivered", m)
		}
	}
	postFix(t, one, rider, riderTok, last+1)
	if m, ok, _ := a.poll(time.Second); ok {
		t.Fatalf("after delivery the customer got %+v", m)
	}
}

func TestTrackBearerHeaderAndUnknownOrder(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": secret})
	// An order tracking has not heard of yet: the socket opens and waits.
	orderID := uuid.NewString()
	tok, _ := testSigner().Tracking(orderID, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/v1/orders/"+orderID+"/track",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err != nil {
		t.Fatalf("dial with a Bearer header: %v", err)
	}
	defer c.CloseNow()
	if err := c.Ping(c.CloseRead(ctx)); err != nil {
		t.Fatalf("ping: %v", err)
	}
	resp, err := http.Get(base + "/v1/orders/not-a-uuid/track?token=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad order id: %d, want 400", resp.StatusCode)
	}
}

func TestRiderSocket(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": secret, "TRACKING_RIDER_RATE": "5"})
	dial := func(t *testing.T, rider string) *websocket.Conn {
		t.Helper()
		tok, _ := testSigner().Rider(rider, time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/v1/riders/"+rider+"/ws?token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	write := func(t *testing.T, c *websocket.Conn, msg string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	read := func(c *websocket.Conn, within time.Duration) (errorFrame, error) {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		var f errorFrame
		_, data, err := c.Read(ctx)
		if err == nil {
			err = json.Unmarshal(data, &f)
		}
		return f, err
	}
	newRider := func() string { return "rider-" + uuid.NewString()[:8] }

	t.Run("ErrorFrameThenGoOn", func(t *testing.T) {
		c := dial(t, newRider())
		write(t, c, `{"lat":500,"lng":1,"heading":0,"speed_kmh":0,"seq":1,"ts":"2026-01-01T00:00:00Z"}`)
		if f, err := read(c, 5*time.Second); err != nil || f.Type != "error" || f.Field != "lat" || f.Status != 400 {
			t.Fatalf("got %+v, %v; want an error frame naming lat", f, err)
		}
		write(t, c, fixJSON(1, 19))
		write(t, c, `nope`)
		if f, err := read(c, 5*time.Second); err != nil || !strings.Contains(f.Error, "malformed") {
			t.Fatalf("got %+v, %v; the socket should go on after a good fix", f, err)
		}
		// The good fix was taken: no error frame for it came first.
	})
	t.Run("ErrRateLimit", func(t *testing.T) {
		c := dial(t, newRider())
		for seq := int64(1); seq <= 30; seq++ {
			write(t, c, fixJSON(seq, 19))
		}
		f, err := read(c, 5*time.Second)
		if err != nil || f.Status != http.StatusTooManyRequests {
			t.Fatalf("got %+v, %v; want a 429 error frame", f, err)
		}
	})
	t.Run("ErrAbuseCloses1008", func(t *testing.T) {
		c := dial(t, newRider())
		var err error
		for i := 0; i < badFrameBurst+2 && err == nil; i++ {
			write(t, c, `{}`)
			_, err = read(c, 5*time.Second)
		}
		if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("close %v, want 1008", err)
		}
	})
	t.Run("ErrOversizeCloses1009", func(t *testing.T) {
		c := dial(t, newRider())
		write(t, c, `{"lat":`+strings.Repeat("1", 4*maxFixBytes)+`}`)
		if _, err := read(c, 5*time.Second); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Fatalf("close %v, want 1009", err)
		}
	})
	t.Run("ErrOtherRider403", func(t *testing.T) {
		tok, _ := testSigner().Rider("me", time.Hour)
		resp, err := http.Get(base + "/v1/riders/you/ws?token=" + tok)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("other rider's socket: %d, want 403", resp.StatusCode)
		}
	})
}

func TestRiderLocationProblems(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": secret, "TRACKING_RIDER_RATE": "2"})
	rider := "rider-" + uuid.NewString()[:8]
	tok, _ := testSigner().Rider(rider, time.Hour)
	post := func(body string) (int, map[string]any, http.Header) {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/riders/"+rider+"/location", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&p)
		return resp.StatusCode, p, resp.Header
	}
	future := fmt.Sprintf(`{"lat":19,"lng":72,"heading":0,"speed_kmh":0,"seq":1,"ts":%q}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	code, p, h := post(future)
	if code != 400 || p["field"] != "ts" || !strings.HasPrefix(h.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("future fix: %d %v %v", code, p, h.Get("Content-Type"))
	}
	code, _, _ = post(`{"lat":` + strings.Repeat("9", 2*maxFixBytes) + `}`)
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("huge body: %d, want 413", code)
	}
	// Over the rate (2/s, burst 4): 429 with Retry-After.
	var limited bool
	for seq := int64(1); seq <= 10 && !limited; seq++ {
		code, _, h = post(fixJSON(seq, 19))
		limited = code == http.StatusTooManyRequests && h.Get("Retry-After") != ""
	}
	if !limited {
		t.Fatal("no 429 with Retry-After over the rider's rate")
	}
}

func TestStatsAndPage(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": secret, "ADMIN_TOKEN": "tracking-admin",
		"TRACKING_TILE_URL": "https://{s}.tiles.example.org/{z}/{x}/{y}.png"})
	get := func(path, tok string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// The counters tell a caller much about the process, and ?gc=1 makes
	// it collect garbage: the admin token's business.
	for _, tok := range []string{"", "tracking-admim"} {
		resp := get("/stats?gc=1", tok)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("/stats with token %q: %d, want 401", tok, resp.StatusCode)
		}
	}
	for _, path := range []string{"/stats?gc=1", "/track/" + uuid.NewString() + "?token=x", "/track/assets/track.js", "/track/assets/track.css"} {
		resp := get(path, "tracking-admin")
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || buf.Len() == 0 {
			t.Fatalf("GET %s = %d (%d bytes)", path, resp.StatusCode, buf.Len())
		}
		// The page loads its script and style from here, and images (map
		// tiles) only from the tile server it was configured with.
		if strings.Contains(path, "?token") {
			for _, ref := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(buf.String(), -1) {
				if !strings.HasPrefix(ref[1], "/track/assets/") {
					t.Errorf("the page loads %s", ref[1])
				}
			}
			csp := resp.Header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "script-src 'self';") || !strings.Contains(csp, "img-src 'self' data: https://*.tiles.example.org;") ||
				!strings.Contains(buf.String(), `data-tiles="https://{s}.tiles.example.org/{z}/{x}/{y}.png"`) {
				t.Errorf("CSP %q, page %s", csp, buf.String())
			}
		}
	}
	resp, err := http.Get(base + "/track/not-an-order")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("page for a bad id: %d, want 404", resp.StatusCode)
	}
}

// TestRelayBrokerRestart stops and starts RabbitMQ's app under a connected
// customer: the socket stays open and fixes flow again once the relay has
// declared its queue and bound the rider anew. It disturbs every test on
// the machine, so it runs only with DABBA_FAULTS=1 (make test-faults).
func TestRelayBrokerRestart(t *testing.T) {
	if os.Getenv("DABBA_FAULTS") == "" {
		t.Skip("restarts the broker: set DABBA_FAULTS=1")
	}
	db, dbURL := testenv.MustOwnSchemaURL(t) // as TestTracking
	env := map[string]string{"TOKEN_SECRET": secret, "DATABASE_URL": dbURL}
	base := testenv.MustRun(t, run, env)
	rider := "rider-" + uuid.NewString()[:8]
	orderID, announce := mustOrder(t, db, rider)
	announce(events.OrderAccepted, events.StatusChanged{Status: events.StatusAccepted})
	announce(events.OrderPickedUp, events.StatusChanged{Status: events.StatusPickedUp})
	trackTok, _ := testSigner().Tracking(orderID, time.Hour)
	riderTok, _ := testSigner().Rider(rider, time.Hour)
	cu := mustDialCustomer(t, base, orderID, trackTok)
	cu.nextOf("status", 5*time.Second)
	seq := int64(0)
	// The relay binds the rider asynchronously: post until a fix gets through.
	deadline := time.Now().Add(15 * time.Second)
	for {
		seq++
		postFix(t, base, rider, riderTok, seq)
		if m, ok, _ := cu.poll(500 * time.Millisecond); ok && m.Type == "location" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no fix reached the customer before the restart")
		}
	}

	for _, args := range [][]string{{"stop_app"}, {"start_app"}, {"await_startup"}} {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	// Post until a fix gets through: the relay needs a moment to come back.
	deadline = time.Now().Add(60 * time.Second)
	for {
		seq++
		postFix(t, base, rider, riderTok, seq) // 503 while the ingest reconnects
		m, ok, timedOut := cu.poll(500 * time.Millisecond)
		if ok && m.Type == "location" {
			return
		}
		if !ok && !timedOut {
			t.Fatalf("the customer's socket closed: %v", cu.err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no fix reached the customer after the broker came back")
		}
	}
}
