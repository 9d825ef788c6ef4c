package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/token"
)

// path is GET /v1/orders/{id}/path's answer, as the suite reads it.
type path struct {
	Points []struct {
		Seq     int64   `json:"seq"`
		Lat     float64 `json:"lat"`
		RiderID string  `json:"rider_id"`
	} `json:"points"`
	Fixes   int  `json:"fixes"`
	Thinned bool `json:"thinned"`
}

// getPath reads an order's path with tok as bearer.
func getPath(t testing.TB, baseURL, orderID, tok, query string) (int, path) {
	t.Helper()
	code, _, b := do(t, http.MethodGet, baseURL+"/v1/orders/"+orderID+"/path"+query, map[string]string{"Authorization": "Bearer " + tok}, "")
	var p path
	if code == http.StatusOK {
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("path: %v: %s", err, b)
		}
	}
	return code, p
}

// TestTrackingPath: the rider's fixes of a delivery are stored, and the
// order's tracking token reads them back in the rider's order, thinned on
// request; nobody else reads them.
func TestTrackingPath(t *testing.T) {
	tracking := base(ports.Tracking)
	o, r := assignedOrder(t)
	// Out of order, as a network may bring them: stored as they come,
	// read back in the rider's order.
	for _, seq := range []int64{1, 2, 4, 3, 5, 6} {
		if code := r.post(t, tracking, seq); code != http.StatusAccepted {
			t.Fatalf("post fix %d = %d", seq, code)
		}
	}
	r.seq = 6
	var p path
	eventually(t, 10*time.Second, "six fixes stored", func() error {
		var code int
		if code, p = getPath(t, tracking, o.ID, o.TrackingToken, ""); code != http.StatusOK || p.Fixes != 6 {
			return fmt.Errorf("%d, %d fixes", code, p.Fixes)
		}
		return nil
	})
	var seqs []int64
	for _, pt := range p.Points {
		seqs = append(seqs, pt.Seq)
		if pt.RiderID != r.ID {
			t.Fatalf("a point of rider %s, want %s", pt.RiderID, r.ID)
		}
	}
	if !slices.Equal(seqs, []int64{1, 2, 3, 4, 5, 6}) || p.Thinned {
		t.Fatalf("path seqs %v (thinned %v), want 1 to 6 in order", seqs, p.Thinned)
	}
	if code, p := getPath(t, tracking, o.ID, o.TrackingToken, "?max=3"); code != http.StatusOK || len(p.Points) != 3 || !p.Thinned ||
		p.Points[0].Seq != 1 || p.Points[2].Seq != 6 {
		t.Fatalf("max=3: %d %+v, want the ends and one more", code, p)
	}

	t.Run("ErrOtherPrincipals", func(t *testing.T) {
		other := placeOrder(t, newKey(), orderJSON("c-path-"+uuid.NewString(), "r-path", 700))
		expired, _ := token.NewSigner([]byte(e2eSecret)).Tracking(o.ID, -time.Minute)
		forged, _ := token.NewSigner([]byte("not the secret")).Tracking(o.ID, time.Hour)
		for _, tt := range []struct {
			name, tok string
			want      int
		}{
			{"no", "", http.StatusUnauthorized},
			{"an expired", expired, http.StatusUnauthorized},
			{"a forged", forged, http.StatusUnauthorized},
			{"another order's", other.TrackingToken, http.StatusForbidden},
			{"the rider's", r.Token, http.StatusForbidden},
		} {
			code, h, _ := do(t, http.MethodGet, tracking+"/v1/orders/"+o.ID+"/path", map[string]string{"Authorization": "Bearer " + tt.tok}, "")
			if code != tt.want || !strings.HasPrefix(h.Get("Content-Type"), "application/problem+json") {
				t.Errorf("%s token: %d %s, want a %d problem", tt.name, code, h.Get("Content-Type"), tt.want)
			}
		}
	})
}

// TestTrackingHistoryRetention: a tracking instance starting with
// TRACKING_HISTORY_DAYS=7 drops the partition of a day 30 days ago, fixes
// and all, and keeps one of 3 days ago.
func TestTrackingHistoryRetention(t *testing.T) {
	db := mustDB(t)
	ctx := context.Background()
	today := time.Now().UTC().Truncate(24 * time.Hour)
	partition := func(back int) string {
		day := today.AddDate(0, 0, -back)
		name := "rider_fixes_" + day.Format("20060102")
		if _, err := db.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF rider_fixes FOR VALUES FROM ('%s') TO ('%s')`,
			name, day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `INSERT INTO rider_fixes (order_id, rider_id, seq, at, ts, lat, lng, heading, speed_kmh)
			VALUES ($1, 'rider-old', 1, $2, $2, 19, 72, 0, 0)`, uuid.NewString(), day.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		return name
	}
	expired, kept := partition(30), partition(3)
	exists := func(name string) bool {
		var ok bool
		if err := db.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	startTracking(t, ports.Tracking+102, map[string]string{"TRACKING_HISTORY_DAYS": "7"})
	eventually(t, 10*time.Second, expired+" dropped", func() error {
		if exists(expired) {
			return fmt.Errorf("still there")
		}
		return nil
	})
	if !exists(kept) {
		t.Fatalf("%s, within the 7 days kept, was dropped", kept)
	}
}

// alertCounts are an order's alerts as the system recorded them: events in
// the outbox, e-mails sent, analytics rows, restaurant notifications.
type alertCounts struct{ NearEvents, NearEmails, NearAnalytics, ArrivingEvents, ArrivingNotifications int }

func readAlerts(t testing.TB, orderID string) alertCounts {
	t.Helper()
	db := mustDB(t)
	var c alertCounts
	err := db.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM outbox WHERE order_id = $1 AND routing_key = 'order.rider_near'),
		(SELECT count(*) FROM emails_sent WHERE order_id = $1 AND kind = 'order.rider_near'),
		(SELECT count(*) FROM analytics_events WHERE order_id = $1 AND event_type = 'order.rider_near'),
		(SELECT count(*) FROM outbox WHERE order_id = $1 AND routing_key = 'order.rider_arriving'),
		(SELECT count(*) FROM restaurant_notifications WHERE order_id = $1 AND event_type = 'order.rider_arriving')`, orderID).
		Scan(&c.NearEvents, &c.NearEmails, &c.NearAnalytics, &c.ArrivingEvents, &c.ArrivingNotifications)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTrackingRiderNearOnce drives a rider to the restaurant and then to the
// customer's door: the restaurant's feed says the rider is arriving, and the
// customer hears "your rider is near" on the tracking socket and by e-mail,
// once, although the tracking service is SIGKILLed the moment the rider
// comes near and the rider then goes on sending fixes to the restarted
// instance and to a second one.
func TestTrackingRiderNearOnce(t *testing.T) {
	tracking := base(ports.Tracking)
	restaurant := "r-near-" + uuid.NewString()[:8]
	// The kitchen is 2.2 km south of the door (19.02, 72.84).
	if code, _, b := do(t, http.MethodPut, base(ports.Restaurant)+"/v1/restaurants/"+restaurant,
		bearer(opsToken(t)), `{"name":"Near Kitchen","lat":19.00,"lng":72.84}`); code != http.StatusOK {
		t.Fatalf("restaurant record: %d %s", code, b)
	}
	o := placeOrder(t, newKey(), orderJSON("c-near-"+uuid.NewString(), restaurant, 900))
	waitPaid(t, 20*time.Second, o.ID)
	r := &rider{ID: "rider-" + uuid.NewString()[:8]}
	r.Token, _ = token.NewSigner([]byte(e2eSecret)).Rider(r.ID, time.Hour)
	if code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+o.ID+"/rider",
		bearer(opsToken(t)), `{"rider_id":"`+r.ID+`"}`); code != http.StatusOK {
		t.Fatalf("assign rider = %d %s", code, b)
	}
	at := func(baseURL string, lat float64) int {
		r.seq++
		body := fmt.Sprintf(`{"lat":%.5f,"lng":72.84,"heading":0,"speed_kmh":18,"seq":%d,"ts":%q}`, lat, r.seq, time.Now().UTC().Format(time.RFC3339Nano))
		code, _, _ := do(t, http.MethodPost, baseURL+"/v1/riders/"+r.ID+"/location",
			map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + r.Token}, body)
		return code
	}
	move := func(status string) {
		if code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+o.ID+"/status",
			bearer(opsToken(t)), `{"status":"`+status+`"}`); code != http.StatusOK {
			t.Fatalf("move to %s = %d %s", status, code, b)
		}
	}
	customer := openTrack(t, tracking, o.ID, o.TrackingToken)

	// 1.1 km from the kitchen, then 110 m: the restaurant hears the rider
	// is arriving (the order's rider is read at its first fix: keep posting).
	at(tracking, 19.01)
	eventually(t, 20*time.Second, "rider arriving in the restaurant's feed", func() error {
		at(tracking, 19.001)
		code, _, b := do(t, http.MethodGet, base(ports.Restaurant)+"/v1/restaurants/"+restaurant+"/orders", bearer(opsToken(t)), "")
		if code != http.StatusOK || !strings.Contains(string(b), `"event":"order.rider_arriving"`) {
			return fmt.Errorf("feed %d %s", code, b)
		}
		return nil
	})
	move("accepted")
	move("picked_up")
	// On the way: nothing near yet.
	for _, lat := range []float64{19.005, 19.01, 19.015} {
		at(tracking, lat)
	}
	if c := readAlerts(t, o.ID); c.NearEvents != 0 {
		t.Fatalf("rider_near raised 550 m from the door: %+v", c)
	}
	// 110 m from the door; tracking is killed at once.
	if code := at(tracking, 19.019); code != http.StatusAccepted {
		t.Fatalf("fix near the door = %d", code)
	}
	proc := dabba.Proc("tracking")
	proc.Kill()
	revive(t, proc)
	second := startTracking(t, ports.Tracking+103, nil)
	for i := range 10 {
		u := tracking
		if i%2 == 1 {
			u = second
		}
		at(u, 19.0192)
		time.Sleep(100 * time.Millisecond)
	}
	want := alertCounts{NearEvents: 1, NearEmails: 1, NearAnalytics: 1, ArrivingEvents: 1, ArrivingNotifications: 1}
	eventually(t, 30*time.Second, "each alert's effects", func() error {
		if c := readAlerts(t, o.ID); c != want {
			return fmt.Errorf("%+v, want %+v", c, want)
		}
		return nil
	})
	time.Sleep(time.Second) // nothing more trickles in
	if c := readAlerts(t, o.ID); c != want {
		t.Fatalf("%+v, want %+v", c, want)
	}
	_ = customer // its instance was killed: a new customer hears it
	again := openTrack(t, tracking, o.ID, o.TrackingToken)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-again.msgs:
			if !ok {
				t.Fatalf("socket closed: %v", again.err)
			}
			if m.Type == "rider_near" {
				if m.RiderID != r.ID {
					t.Fatalf("rider_near of %s, want %s", m.RiderID, r.ID)
				}
				return
			}
		case <-deadline:
			t.Fatal("the customer was not told the rider is near")
		}
	}
}
