package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

// testSecret signs the tokens of the service MustRun starts.
const testSecret = "orders-test-secret-of-32-bytes!!"

// mint returns a token of role for sub, signed as MustRun's service wants.
func mint(tb testing.TB, role, sub string) string {
	tb.Helper()
	return testenv.MustToken(tb, testSecret, role, sub)
}

// MustRun starts the service in-process on a free port, with env over the
// test defaults, and returns its base URL once /readyz answers 200.
func MustRun(tb testing.TB, env ...map[string]string) string {
	tb.Helper()
	vars := map[string]string{"TOKEN_SECRET": testSecret}
	for _, e := range env {
		maps.Copy(vars, e)
	}
	base := testenv.MustRun(tb, run, vars)
	body, _ := json.Marshal(map[string]any{"items": testMenu.Items})
	if resp, b := send(tb, http.MethodPut, mint(tb, token.AudienceRestaurant, testMenu.RestaurantID),
		base+"/v1/restaurants/"+testMenu.RestaurantID+"/menu", "", "application/json", string(body)); resp.StatusCode != http.StatusOK {
		tb.Fatalf("PUT the test menu = %d %s", resp.StatusCode, b)
	}
	return base
}

func orderBody(customer string) string {
	return fmt.Sprintf(`{"customer_id":%q,"restaurant_id":"r-1","email":"eater@example.com",
		"items":[{"sku":"biryani","name":"Chicken biryani","quantity":2,"unit_price_cents":450}],
		"delivery_address":{"line1":"1 MG Road","lat":17.385,"lng":78.4867}}`, customer)
}

// post sends body as tok's holder; key is the Idempotency-Key, if any.
func post(tb testing.TB, tok, url, key, contentType, body string) (*http.Response, []byte) {
	tb.Helper()
	return send(tb, http.MethodPost, tok, url, key, contentType, body)
}

// get reads url as tok's holder.
func get(tb testing.TB, tok, url string) (*http.Response, []byte) {
	tb.Helper()
	return send(tb, http.MethodGet, tok, url, "", "", "")
}

// send sends a request with tok and, when not empty, an Idempotency-Key
// and a Content-Type, and returns the answer with its body read.
func send(tb testing.TB, method, tok, url, key, contentType, body string) (*http.Response, []byte) {
	tb.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestPlaceOrder(t *testing.T) {
	base := MustRun(t)
	ops := mint(t, token.AudienceOps, "op-1")

	t.Run("OK", func(t *testing.T) {
		t.Parallel()
		customer := uuid.NewString()
		resp, body := post(t, mint(t, token.AudienceCustomer, customer), base+"/v1/orders", uuid.NewString(), "application/json", orderBody(customer))
		if resp.StatusCode != 201 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var o Order
		if err := json.Unmarshal(body, &o); err != nil {
			t.Fatal(err)
		}
		if o.Status != "placed" || o.TotalCents != 900 || o.TrackingToken == "" || o.CreatedAt.IsZero() {
			t.Fatalf("order = %+v", o)
		}
		if loc := resp.Header.Get("Location"); loc != "/v1/orders/"+o.ID {
			t.Fatalf("Location = %q", loc)
		}
		got, b := get(t, mint(t, token.AudienceCustomer, customer), base+"/v1/orders/"+o.ID)
		var g Order
		_ = json.Unmarshal(b, &g)
		if got.StatusCode != 200 || g.ID != o.ID || len(g.History) != 1 || g.History[0].Status != "placed" {
			t.Fatalf("GET = %d %+v", got.StatusCode, g)
		}
	})

	t.Run("ReplayIsByteForByte", func(t *testing.T) {
		t.Parallel()
		key, body := uuid.NewString(), orderBody(uuid.NewString())
		r1, b1 := post(t, ops, base+"/v1/orders", key, "application/json", body)
		r2, b2 := post(t, ops, base+"/v1/orders", key, "application/json", body)
		if r1.StatusCode != 201 || r2.StatusCode != 201 || !bytes.Equal(b1, b2) {
			t.Fatalf("first %d %s, replay %d %s", r1.StatusCode, b1, r2.StatusCode, b2)
		}
		if r1.Header.Get("Idempotent-Replayed") != "" || r2.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatal("Idempotent-Replayed header wrong")
		}
		if r1.Header.Get("Location") != r2.Header.Get("Location") {
			t.Fatal("replay has another Location")
		}
	})

	t.Run("ErrKeyReusedWithOtherBody", func(t *testing.T) {
		t.Parallel()
		key, customer := uuid.NewString(), uuid.NewString()
		post(t, ops, base+"/v1/orders", key, "application/json", orderBody(customer))
		other := strings.Replace(orderBody(customer), `"quantity":2`, `"quantity":3`, 1)
		if r, b := post(t, ops, base+"/v1/orders", key, "application/json", other); r.StatusCode != 422 {
			t.Fatalf("status %d: %s", r.StatusCode, b)
		}
	})

	t.Run("ConcurrentSameKeyCreatesOne", func(t *testing.T) {
		t.Parallel()
		key, body := uuid.NewString(), orderBody(uuid.NewString())
		var wg sync.WaitGroup
		var mu sync.Mutex
		ids, codes := map[string]bool{}, map[int]int{}
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, b := post(t, ops, base+"/v1/orders", key, "application/json", body)
				mu.Lock()
				defer mu.Unlock()
				codes[r.StatusCode]++
				if r.StatusCode == 201 {
					var o Order
					_ = json.Unmarshal(b, &o)
					ids[o.ID] = true
				}
			}()
		}
		wg.Wait()
		if len(ids) != 1 || codes[201]+codes[409] != 20 {
			t.Fatalf("orders created %d, codes %v", len(ids), codes)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		t.Parallel()
		big := `{"customer_id":"` + strings.Repeat("x", 1<<20) + `"}`
		tests := []struct {
			name, key, ct, body string
			want                int
			wantField           string
		}{
			{"ErrNoKey", "", "application/json", orderBody("c"), 400, "Idempotency-Key"},
			{"ErrContentType", "k", "text/plain", orderBody("c"), 415, ""},
			{"ErrMalformed", "k", "application/json", `{"customer_id":`, 400, ""},
			{"ErrUnknownField", "k", "application/json", `{"customer":"c"}`, 400, "customer"},
			{"ErrWrongType", "k", "application/json", `{"customer_id":5}`, 400, "customer_id"},
			{"ErrEmptyItems", "k", "application/json", strings.Replace(orderBody("c"), `"items":[{"sku":"biryani","name":"Chicken biryani","quantity":2,"unit_price_cents":450}]`, `"items":[]`, 1), 400, "items"},
			{"ErrNegativePrice", "k", "application/json", strings.Replace(orderBody("c"), `450`, `-450`, 1), 400, "items[0].unit_price_cents"},
			{"ErrTooLarge", "k", "application/json", big, 413, ""},
		}
		for _, tt := range tests {
			resp, body := post(t, ops, base+"/v1/orders", tt.key, tt.ct, tt.body)
			var p struct {
				Status int    `json:"status"`
				Field  string `json:"field"`
			}
			_ = json.Unmarshal(body, &p)
			if resp.StatusCode != tt.want || p.Status != tt.want || p.Field != tt.wantField ||
				resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("%s: got %d %s (%s)", tt.name, resp.StatusCode, body, resp.Header.Get("Content-Type"))
			}
		}
	})

	t.Run("GetErrors", func(t *testing.T) {
		t.Parallel()
		for path, want := range map[string]int{"/v1/orders/not-a-uuid": 400, "/v1/orders/" + uuid.NewString(): 404} {
			resp, _ := get(t, ops, base+path)
			if resp.StatusCode != want {
				t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
			}
		}
	})
}

// TestMenus: a restaurant replaces its own menu (an operator any), anyone
// reads it, and orders are priced from it: a price the customer saw that
// is no longer the menu's is 409, a dish not on it or not available 422.
func TestMenus(t *testing.T) {
	base := MustRun(t)
	restaurant := "r-" + uuid.NewString()[:8]
	url := base + "/v1/restaurants/" + restaurant + "/menu"
	put := func(tok, body string) (int, []byte) {
		t.Helper()
		resp, b := send(t, http.MethodPut, tok, url, "", "application/json", body)
		return resp.StatusCode, b
	}
	own := mint(t, token.AudienceRestaurant, restaurant)
	menu := `{"items":[{"sku":"dosa","name":"Masala dosa","price_cents":12000,"available":true},
		{"sku":"vada","name":"Medu vada","price_cents":6000,"available":false}]}`

	t.Run("WhoMayPut", func(t *testing.T) {
		for _, tt := range []struct {
			name, tok string
			want      int
		}{
			{"ErrNoToken", "", 401},
			{"ErrOtherRestaurant", mint(t, token.AudienceRestaurant, "r-other"), 403},
			{"ErrCustomer", mint(t, token.AudienceCustomer, restaurant), 403},
			{"Operator", mint(t, token.AudienceOps, "op-1"), 200},
			{"Itself", own, 200},
		} {
			if code, b := put(tt.tok, menu); code != tt.want {
				t.Errorf("%s: %d %s, want %d", tt.name, code, b, tt.want)
			}
		}
	})
	t.Run("AnyoneReads", func(t *testing.T) {
		resp, b := get(t, "", url)
		var m Menu
		if err := json.Unmarshal(b, &m); resp.StatusCode != 200 || err != nil || m.RestaurantID != restaurant || len(m.Items) != 2 ||
			m.Items[0] != (MenuItem{SKU: "dosa", Name: "Masala dosa", PriceCents: 12000, Available: true}) {
			t.Fatalf("GET menu = %d %s", resp.StatusCode, b)
		}
		if resp, b := get(t, "", base+"/v1/restaurants/r-none-"+uuid.NewString()+"/menu"); resp.StatusCode != 200 || !strings.Contains(string(b), `"items":[]`) {
			t.Fatalf("GET a menu never put = %d %s", resp.StatusCode, b)
		}
	})
	t.Run("ErrBadMenu", func(t *testing.T) {
		for _, tt := range []struct{ body, field string }{
			{`{}`, "items"},
			{`{"items":[{"sku":"a","name":"A","price_cents":1,"available":true},{"sku":"a","name":"B","price_cents":1,"available":true}]}`, "items[1].sku"},
			{`{"items":[{"sku":"a","name":"A","price_cents":-1,"available":true}]}`, "items[0].price_cents"},
			{`{"items":[{"sku":"a","name":"A","price_cents":1}]}`, "items[0].available"},
			{`{"items":[{"sku":"a","price_cents":1,"available":true}]}`, "items[0].name"},
		} {
			code, b := put(own, tt.body)
			var p struct{ Field string }
			_ = json.Unmarshal(b, &p)
			if code != 400 || p.Field != tt.field {
				t.Errorf("PUT %s = %d %s, want 400 on %s", tt.body, code, b, tt.field)
			}
		}
	})
	t.Run("Pricing", func(t *testing.T) {
		if code, b := put(own, menu); code != 200 {
			t.Fatalf("PUT = %d %s", code, b)
		}
		customer := "c-" + uuid.NewString()
		tok := mint(t, token.AudienceCustomer, customer)
		order := func(items string) (int, []byte) {
			body := `{"restaurant_id":"` + restaurant + `","email":"e@example.com","items":` + items + `,
				"delivery_address":{"line1":"1 MG Road","lat":17.385,"lng":78.4867}}`
			r, b := post(t, tok, base+"/v1/orders", uuid.NewString(), "application/json", body)
			return r.StatusCode, b
		}
		code, b := order(`[{"sku":"dosa","quantity":2}]`)
		var o Order
		if err := json.Unmarshal(b, &o); code != 201 || err != nil || o.TotalCents != 24000 || o.CustomerID != customer ||
			o.Items[0] != (events.Item{SKU: "dosa", Name: "Masala dosa", Quantity: 2, UnitPriceCents: 12000}) {
			t.Fatalf("order = %d %s", code, b)
		}
		for _, tt := range []struct {
			name, items string
			want        int
			field       string
		}{
			{"ShownPriceStillTheMenus", `[{"sku":"dosa","quantity":1,"unit_price_cents":12000}]`, 201, ""},
			{"ErrPriceChanged", `[{"sku":"dosa","quantity":1},{"sku":"dosa","quantity":1,"unit_price_cents":11000}]`, 409, "items[1].unit_price_cents"},
			{"ErrNotOnMenu", `[{"sku":"idli","quantity":1}]`, 422, "items[0].sku"},
			{"ErrUnavailable", `[{"sku":"dosa","quantity":1},{"sku":"vada","quantity":1}]`, 422, "items[1].sku"},
		} {
			code, b := order(tt.items)
			var p struct {
				Field  string
				Detail string
			}
			_ = json.Unmarshal(b, &p)
			if code != tt.want || p.Field != tt.field || (tt.want == 409 && !strings.Contains(p.Detail, "price changed")) {
				t.Errorf("%s: %d %s, want %d on %q", tt.name, code, b, tt.want, tt.field)
			}
		}
		// The restaurant raises a price: what the app showed is refused.
		if code, b := put(own, strings.Replace(menu, "12000", "13000", 1)); code != 200 {
			t.Fatalf("PUT = %d %s", code, b)
		}
		if code, b := order(`[{"sku":"dosa","quantity":1,"unit_price_cents":12000}]`); code != 409 {
			t.Fatalf("order at the old price = %d %s, want 409", code, b)
		}
	})
	t.Run("ErrOtherCustomer", func(t *testing.T) {
		r, b := post(t, mint(t, token.AudienceCustomer, "c-me"), base+"/v1/orders", uuid.NewString(), "application/json", orderBody("c-someone-else"))
		if r.StatusCode != 403 {
			t.Fatalf("an order naming another customer = %d %s, want 403", r.StatusCode, b)
		}
	})
}

func TestStatusMoves(t *testing.T) {
	base := MustRun(t)
	ops := mint(t, token.AudienceOps, "op-1")
	_, b := post(t, ops, base+"/v1/orders", uuid.NewString(), "application/json", orderBody(uuid.NewString()))
	var o Order
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	move := func(status string) int {
		r, _ := post(t, ops, base+"/v1/orders/"+o.ID+"/status", "", "application/json", `{"status":"`+status+`"}`)
		return r.StatusCode
	}
	if c := move("picked_up"); c != 409 {
		t.Fatalf("placed → picked_up = %d, want 409", c)
	}
	if c := move("paid"); c != 400 {
		t.Fatalf("a client setting paid = %d, want 400", c)
	}
	if c := move("cancelled"); c != 200 {
		t.Fatalf("placed → cancelled = %d, want 200", c)
	}
	if c := move("accepted"); c != 409 {
		t.Fatalf("cancelled → accepted = %d, want 409", c)
	}
	r, _ := post(t, ops, base+"/v1/orders/"+o.ID+"/rider", "", "application/json", `{"rider_id":"rider-1"}`)
	if r.StatusCode != 409 {
		t.Fatalf("assigning a rider to a cancelled order = %d, want 409", r.StatusCode)
	}
}

// TestPaymentOutcomesMoveOrders writes the payment service's outcomes to
// the outbox, as payment does, and sees the running service move the order:
// paid, then not back by a late payment_failed.
func TestPaymentOutcomesMoveOrders(t *testing.T) {
	base := MustRun(t)
	ops := mint(t, token.AudienceOps, "op-1")
	_, b := post(t, ops, base+"/v1/orders", uuid.NewString(), "application/json", orderBody(uuid.NewString()))
	var o Order
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	db := testenv.MustDB(t)
	announce := func(key string, data any) {
		err := postgres.InTx(context.Background(), db, func(tx pgx.Tx) error {
			_, err := outbox.Enqueue(context.Background(), tx, key, o.ID, time.Now(), data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitStatus := func(want string) Order {
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, b := get(t, ops, base+"/v1/orders/"+o.ID)
			var g Order
			_ = json.Unmarshal(b, &g)
			if g.Status == want {
				return g
			}
			if time.Now().After(deadline) {
				t.Fatalf("status %q, want %q", g.Status, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	announce(events.OrderPaid, events.Paid{ChargeID: "ch_1", AmountCents: o.TotalCents})
	waitStatus(events.StatusPaid)
	// A late payment_failed must not take the order backwards.
	announce(events.OrderPaymentFailed, events.PaymentFailed{Reason: "late"})
	if r, _ := post(t, ops, base+"/v1/orders/"+o.ID+"/status", "", "application/json", `{"status":"accepted"}`); r.StatusCode != 200 {
		t.Fatalf("paid → accepted = %d", r.StatusCode)
	}
	g := waitStatus(events.StatusAccepted)
	var statuses []string
	for _, h := range g.History {
		statuses = append(statuses, h.Status)
	}
	if strings.Join(statuses, ",") != "placed,paid,accepted" {
		t.Fatalf("history = %v", statuses)
	}
}

// TestFloodFromOneAddress: past ORDERS_RATE_PER_IP requests a second one
// address gets 429 with Retry-After, and health checks are never limited.
func TestFloodFromOneAddress(t *testing.T) {
	base := MustRun(t, map[string]string{"ORDERS_RATE_PER_IP": "5"})
	ops := mint(t, token.AudienceOps, "op-1")
	var limited *http.Response
	for i := 0; i < 20 && limited == nil; i++ {
		resp, b := post(t, ops, base+"/v1/orders", uuid.NewString(), "application/json", orderBody("c-flood-"+uuid.NewString()))
		switch resp.StatusCode {
		case http.StatusCreated:
		case http.StatusTooManyRequests:
			if resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("429 without Retry-After or problem: %v %s", resp.Header, b)
			}
			limited = resp
		default:
			t.Fatalf("POST = %d %s", resp.StatusCode, b)
		}
	}
	if limited == nil {
		t.Fatal("20 requests in a row from one address were never limited at 5 a second")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s while limited = %d", path, resp.StatusCode)
		}
	}
}
