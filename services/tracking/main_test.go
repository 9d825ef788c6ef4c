package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

const secret = "tracking-test-secret"

var signer = token.NewSigner([]byte(secret))

// customer is a tracking socket the test reads.
type customer struct {
	t *testing.T
	c *websocket.Conn
}

func dialCustomer(t *testing.T, base, orderID, tok string) *customer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/v1/orders/"+orderID+"/track?token="+tok, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &customer{t: t, c: c}
}

type message struct {
	Type   string  `json:"type"`
	Status string  `json:"status"`
	Seq    int64   `json:"seq"`
	Lat    float64 `json:"lat"`
}

// next reads the next message, failing after within.
func (cu *customer) next(within time.Duration) message {
	cu.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	_, data, err := cu.c.Read(ctx)
	if err != nil {
		cu.t.Fatalf("read: %v", err)
	}
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		cu.t.Fatal(err)
	}
	return m
}

// nextLocation skips status messages and returns the next fix's seq.
func (cu *customer) nextLocation(within time.Duration) int64 {
	cu.t.Helper()
	for {
		if m := cu.next(within); m.Type == "location" {
			return m.Seq
		}
	}
}

func postFix(t *testing.T, base, rider, tok string, seq int64) int {
	t.Helper()
	body := fmt.Sprintf(`{"lat":19.0%d,"lng":72.84,"heading":90,"speed_kmh":20,"seq":%d,"ts":%q}`, seq%10, seq, time.Now().UTC().Format(time.RFC3339Nano))
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/riders/"+rider+"/location", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestTracking(t *testing.T) {
	env := map[string]string{"TOKEN_SECRET": secret}
	one := testenv.MustRun(t, run, env)
	two := testenv.MustRun(t, run, env)
	db := testenv.MustDB(t)
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()

	orderID, rider := uuid.NewString(), "rider-"+uuid.NewString()[:8]
	announce := func(key string, data any) {
		e, err := events.New(uuid.NewString(), key, orderID, time.Now(), data)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(e)
		testenv.Publish(t, pub, broker.ExchangeOrders, key, e.ID, orderID, body)
	}
	announce(events.OrderPaid, events.Paid{ChargeID: "ch"})
	announce(events.OrderRiderAssigned, events.RiderAssigned{RiderID: rider})
	testenv.Eventually(t, 10*time.Second, "assignment stored", func() bool {
		o, err := loadOrder(context.Background(), db, orderID)
		return err == nil && o.RiderID == rider && o.Status == "paid"
	})
	trackTok, _ := signer.Tracking(orderID, time.Hour)
	riderTok, _ := signer.Rider(rider, time.Hour)

	t.Run("ErrWrongTokens", func(t *testing.T) {
		other, _ := signer.Tracking(uuid.NewString(), time.Hour)
		for name, tok := range map[string]string{"none": "", "garbage": "x.y.z", "other order": other, "rider token": riderTok} {
			resp, err := http.Get(one + "/v1/orders/" + orderID + "/track?token=" + tok)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s: %d, want 401", name, resp.StatusCode)
			}
		}
		otherRider, _ := signer.Rider("someone-else", time.Hour)
		if code := postFix(t, one, rider, otherRider, 1); code != http.StatusForbidden {
			t.Errorf("another rider's token: %d, want 403", code)
		}
	})

	a := dialCustomer(t, one, orderID, trackTok)
	if m := a.next(5 * time.Second); m.Type != "status" || m.Status != "paid" {
		t.Fatalf("first message %+v, want status paid", m)
	}
	if code := postFix(t, one, rider, riderTok, 1); code != http.StatusAccepted {
		t.Fatalf("POST fix = %d", code)
	}
	if seq := a.nextLocation(5 * time.Second); seq != 1 {
		t.Fatalf("got seq %d, want 1", seq)
	}

	// Out of order: 3 then 2 then 4; the customer must never see 2.
	for _, seq := range []int64{3, 2, 4} {
		postFix(t, one, rider, riderTok, seq)
	}
	for last := int64(1); last < 4; {
		seq := a.nextLocation(5 * time.Second)
		if seq <= last {
			t.Fatalf("got seq %d after %d", seq, last)
		}
		last = seq
	}

	// A customer connecting to the other instance gets the latest position
	// at once, and nothing older.
	testenv.Eventually(t, 5*time.Second, "position stored", func() bool {
		f, ok, _ := loadPosition(context.Background(), db, rider)
		return ok && f.Seq == 4
	})
	b := dialCustomer(t, two, orderID, trackTok)
	if seq := b.nextLocation(5 * time.Second); seq != 4 {
		t.Fatalf("reconnecting customer got seq %d first, want 4", seq)
	}

	// A stalled customer (never reads) does not hold the others back, and
	// the second instance serves its customer from the same feed.
	stalled := dialCustomer(t, one, orderID, trackTok)
	_ = stalled
	for seq := int64(5); seq <= 40; seq++ {
		postFix(t, one, rider, riderTok, seq)
	}
	for _, cu := range []*customer{a, b} {
		var seq int64
		for seq < 40 {
			next := cu.nextLocation(5 * time.Second)
			if next <= seq {
				t.Fatalf("seq %d after %d", next, seq)
			}
			seq = next
		}
	}
}

func TestRiderSocket(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": secret})
	rider := "rider-" + uuid.NewString()[:8]
	tok, _ := signer.Rider(rider, time.Hour)
	dial := func(t *testing.T) *websocket.Conn {
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
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	read := func(t *testing.T, c *websocket.Conn) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, data, err := c.Read(ctx)
		return string(data), err
	}

	t.Run("ErrorFrameThenGoOn", func(t *testing.T) {
		c := dial(t)
		write(t, c, `{"lat":500}`)
		if msg, err := read(t, c); err != nil || !strings.Contains(msg, `"type":"error"`) || !strings.Contains(msg, "lng") && !strings.Contains(msg, "lat") {
			t.Fatalf("got %q, %v; want an error frame", msg, err)
		}
		write(t, c, fmt.Sprintf(`{"lat":1,"lng":2,"heading":0,"speed_kmh":0,"seq":1,"ts":%q}`, time.Now().UTC().Format(time.RFC3339)))
		write(t, c, `nope`)
		if msg, err := read(t, c); err != nil || !strings.Contains(msg, "malformed") {
			t.Fatalf("got %q, %v; the socket should go on after a good fix", msg, err)
		}
	})
	t.Run("ErrAbuseCloses1008", func(t *testing.T) {
		c := dial(t)
		var err error
		for i := 0; i < maxBadFrames+2 && err == nil; i++ {
			write(t, c, `{}`)
			_, err = read(t, c)
		}
		if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("close %v, want 1008", err)
		}
	})
	t.Run("ErrOversizeCloses1009", func(t *testing.T) {
		c := dial(t)
		write(t, c, `{"lat":`+strings.Repeat("1", 4*maxFixBytes)+`}`)
		if _, err := read(t, c); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Fatalf("close %v, want 1009", err)
		}
	})
}
