package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

// testSecret signs the tokens of the service TestRun starts.
const testSecret = "restaurant-test-secret-32-bytes!"

// as returns a token of role for sub, signed as the service under test wants.
func as(tb testing.TB, role, sub string) string {
	tb.Helper()
	return testenv.MustToken(tb, testSecret, role, sub)
}

// getAs reads url with tok.
func getAs(tb testing.TB, tok, url string) *http.Response {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	return resp
}

// getFeed reads a restaurant's feed as an operator.
func getFeed(tb testing.TB, url string) (int, Feed) {
	tb.Helper()
	resp := getAs(tb, as(tb, token.AudienceOps, "op-1"), url)
	defer resp.Body.Close()
	var f Feed
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&f); err != nil {
			tb.Fatal(err)
		}
	}
	return resp.StatusCode, f
}

// TestRun runs the service against the real broker and database: events
// published to the orders exchange show up in the restaurant's feed, newest
// first; garbage is dead-lettered at once.
func TestRun(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": testSecret})
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()

	t.Run("OK", func(t *testing.T) {
		restaurant, orderID := "r-"+uuid.NewString(), uuid.NewString()
		feedURL := base + "/v1/restaurants/" + restaurant + "/orders"
		steps := []struct {
			key  string
			data any
		}{
			{events.OrderPlaced, events.Placed{RestaurantID: restaurant, TotalCents: 1200, Email: "e@example.com"}},
			{events.OrderPaid, events.Paid{ChargeID: "ch_9", AmountCents: 1200}}, // no restaurant: looked up
			{events.OrderCancelled, events.StatusChanged{Status: "cancelled", From: "paid", RestaurantID: restaurant}},
		}
		// One at a time, so the feed's order is known.
		for i, s := range steps {
			e, err := events.New(uuid.NewString(), s.key, orderID, time.Now(), s.data)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := json.Marshal(e)
			testenv.Publish(t, pub, broker.ExchangeOrders, s.key, e.ID, orderID, body)
			testenv.Eventually(t, 20*time.Second, s.key+" in the feed", func() bool {
				_, f := getFeed(t, feedURL)
				return len(f.Notifications) == i+1
			})
		}
		code, f := getFeed(t, feedURL)
		var got []string
		for _, n := range f.Notifications {
			if n.OrderID != orderID {
				t.Fatalf("notification for order %s, want %s", n.OrderID, orderID)
			}
			got = append(got, n.Event)
		}
		want := []string{events.OrderCancelled, events.OrderPaid, events.OrderPlaced}
		if code != http.StatusOK || f.RestaurantID != restaurant || len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("feed = %d %+v, want events %v", code, f, want)
		}
		if p := f.Notifications[2].TotalCents; p == nil || *p != 1200 {
			t.Fatalf("order.placed total = %v, want 1200", p)
		}

		if _, f := getFeed(t, feedURL+"?limit=1"); len(f.Notifications) != 1 || f.Notifications[0].Event != events.OrderCancelled {
			t.Fatalf("?limit=1 feed = %+v, want the newest only", f)
		}
	})

	t.Run("EmptyFeed", func(t *testing.T) {
		restaurant := "r-" + uuid.NewString()
		resp := getAs(t, as(t, token.AudienceRestaurant, restaurant), base+"/v1/restaurants/"+restaurant+"/orders")
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var raw struct {
			Notifications json.RawMessage `json:"notifications"`
		}
		if err := json.Unmarshal(b, &raw); resp.StatusCode != http.StatusOK || err != nil || string(raw.Notifications) != "[]" {
			t.Fatalf("empty feed = %d %s", resp.StatusCode, b)
		}
	})

	t.Run("ErrBadLimit", func(t *testing.T) {
		for _, limit := range []string{"0", "-1", "501", "ten"} {
			resp := getAs(t, as(t, token.AudienceOps, "op-1"), base+"/v1/restaurants/r-1/orders?limit="+limit)
			var p struct {
				Field string `json:"field"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" || p.Field != "limit" {
				t.Errorf("limit=%s: %d %s field %q, want a 400 problem naming limit", limit, resp.StatusCode, resp.Header.Get("Content-Type"), p.Field)
			}
		}
	})

	t.Run("WhoMayRead", func(t *testing.T) {
		for _, tt := range []struct {
			name, tok string
			want      int
		}{
			{"Itself", as(t, token.AudienceRestaurant, "r-1"), http.StatusOK},
			{"Operator", as(t, token.AudienceOps, "op-1"), http.StatusOK},
			{"ErrNoToken", "", http.StatusUnauthorized},
			{"ErrOtherSecret", "x.y.z", http.StatusUnauthorized},
			{"ErrOtherRestaurant", as(t, token.AudienceRestaurant, "r-2"), http.StatusForbidden},
			{"ErrCustomer", as(t, token.AudienceCustomer, "r-1"), http.StatusForbidden},
		} {
			resp := getAs(t, tt.tok, base+"/v1/restaurants/r-1/orders")
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s: %d, want %d", tt.name, resp.StatusCode, tt.want)
			}
		}
	})

	t.Run("ErrMalformedDeadLettered", func(t *testing.T) {
		id := uuid.NewString()
		// Straight to the restaurant-notify queue, so no other consumer gets it.
		testenv.Publish(t, pub, "", broker.QueueRestaurant, id, "", []byte(`[1, 2, 3]`))
		m := testenv.MustDeadLettered(t, conn, broker.QueueRestaurant, id)
		if m.Headers[broker.HeaderReason] != broker.ReasonPermanent {
			t.Fatalf("dead-letter reason = %v, want %s", m.Headers[broker.HeaderReason], broker.ReasonPermanent)
		}
	})
}

func TestRestaurantRecord(t *testing.T) {
	base := testenv.MustRun(t, run, map[string]string{"TOKEN_SECRET": recordSecret})
	id := "r-" + uuid.NewString()
	signer := token.NewSigner([]byte(recordSecret))
	ops, _ := signer.Mint(token.AudienceOps, "op-1", time.Hour)
	own, _ := signer.Mint(token.AudienceRestaurant, id, time.Hour)
	other, _ := signer.Mint(token.AudienceRestaurant, "r-someone-else", time.Hour)
	customer, _ := signer.Mint(token.AudienceCustomer, "c-1", time.Hour)
	put := func(token, body string) (int, Restaurant, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, base+"/v1/restaurants/"+id, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var rec Restaurant
		_ = json.Unmarshal(b, &rec)
		return resp.StatusCode, rec, string(b)
	}
	t.Run("ErrNoToken", func(t *testing.T) {
		if code, _, b := put("", `{"name":"Thali House","lat":19.02,"lng":72.85}`); code != http.StatusUnauthorized {
			t.Fatalf("no token: %d %s", code, b)
		}
		if code, _, b := put("wrong", `{"name":"Thali House","lat":19.02,"lng":72.85}`); code != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d %s", code, b)
		}
		for name, tok := range map[string]string{"another restaurant's": other, "a customer's": customer} {
			if code, _, b := put(tok, `{"name":"Thali House","lat":19.02,"lng":72.85}`); code != http.StatusForbidden {
				t.Errorf("%s token: %d %s, want 403", name, code, b)
			}
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		for field, body := range map[string]string{
			"name": `{"lat":19,"lng":72}`, "lat": `{"name":"x","lat":91,"lng":72}`, "lng": `{"name":"x","lat":19}`,
		} {
			if code, _, b := put(ops, body); code != http.StatusBadRequest || !strings.Contains(b, `"field":"`+field+`"`) {
				t.Errorf("%s: %d %s, want a 400 naming %s", body, code, b, field)
			}
		}
	})
	t.Run("OK", func(t *testing.T) {
		for _, w := range []struct{ tok, name string }{{own, "Thali House"}, {ops, "Thali House (moved)"}} {
			tok, name := w.tok, w.name
			if code, rec, b := put(tok, `{"name":"`+name+`","lat":19.02,"lng":72.85}`); code != http.StatusOK || rec.Name != name || rec.Lat != 19.02 {
				t.Fatalf("put: %d %s", code, b)
			}
		}
		resp, err := http.Get(base + "/v1/restaurants/" + id)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rec Restaurant
		if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil || resp.StatusCode != http.StatusOK || rec.Name != "Thali House (moved)" || rec.Lng != 72.85 {
			t.Fatalf("get: %d %+v %v", resp.StatusCode, rec, err)
		}
		resp2, err := http.Get(base + "/v1/restaurants/r-nobody-" + uuid.NewString())
		if err != nil {
			t.Fatal(err)
		}
		resp2.Body.Close()
		if resp2.StatusCode != http.StatusNotFound {
			t.Fatalf("unknown restaurant: %d, want 404", resp2.StatusCode)
		}
	})
}

// recordSecret signs the record test's tokens.
const recordSecret = "restaurant-record-test-secret-of-32-bytes"
