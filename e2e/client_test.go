package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

func base(port int) string { return fmt.Sprintf("http://127.0.0.1:%d", port) }

// order is the part of the API's order the suite reads.
type order struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	TotalCents    int64  `json:"total_cents"`
	TrackingToken string `json:"tracking_token"`
	RestaurantID  string `json:"restaurant_id"`
	History       []struct {
		Status string    `json:"status"`
		At     time.Time `json:"at"`
	} `json:"history"`
}

// orderJSON is an order of one dish at priceCents, the price the customer
// was shown: the restaurant's menu must list it (ensureMenu).
func orderJSON(customer, restaurant string, priceCents int64) string {
	return orderJSONTo(customer, restaurant, "e2e@example.com", priceCents)
}

// orderJSONTo is orderJSON with the customer's e-mail address.
func orderJSONTo(customer, restaurant, email string, priceCents int64) string {
	return fmt.Sprintf(`{"customer_id":%q,"restaurant_id":%q,"email":%q,
		"items":[{"sku":%q,"quantity":1,"unit_price_cents":%d}],
		"delivery_address":{"line1":"Dadar West","lat":19.02,"lng":72.84}}`, customer, restaurant, email, dish(priceCents), priceCents)
}

// dish is the sku of the suite's dish at priceCents.
func dish(priceCents int64) string { return fmt.Sprintf("dish-%d", priceCents) }

// menus holds the dishes the suite has put on each restaurant's menu.
var menus = struct {
	sync.Mutex
	dishes map[string][]int64
}{dishes: map[string][]int64{}}

// ensureMenu puts on the menu of body's restaurant (an orderJSON) the
// dishes its lines name, as an operator, unless the suite did already.
func ensureMenu(body string) error {
	var b struct {
		RestaurantID string `json:"restaurant_id"`
		Items        []struct {
			UnitPriceCents int64 `json:"unit_price_cents"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		return err
	}
	menus.Lock()
	defer menus.Unlock()
	dishes, added := menus.dishes[b.RestaurantID], false
	for _, it := range b.Items {
		if !slices.Contains(dishes, it.UnitPriceCents) {
			dishes, added = append(dishes, it.UnitPriceCents), true
		}
	}
	if !added {
		return nil
	}
	return putMenu(b.RestaurantID, dishes, func(int64) bool { return true })
}

// putMenu replaces a restaurant's menu, as an operator, with the suite's
// dishes at prices, each available as available says, and remembers them.
func putMenu(restaurant string, prices []int64, available func(int64) bool) error {
	var m struct {
		Items []map[string]any `json:"items"`
	}
	for _, p := range prices {
		m.Items = append(m.Items, map[string]any{"sku": dish(p), "name": fmt.Sprintf("Dish at %d", p), "price_cents": p, "available": available(p)})
	}
	body, _ := json.Marshal(m)
	ops, err := token.NewSigner([]byte(e2eSecret)).Mint(token.AudienceOps, "e2e-operator", time.Hour)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodPut, base(ports.Orders)+"/v1/restaurants/"+restaurant+"/menu", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+ops)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("PUT menu of %s = %d %s", restaurant, resp.StatusCode, b)
	}
	menus.dishes[restaurant] = prices
	return nil
}

// mustMenu is ensureMenu for a test.
func mustMenu(t testing.TB, body string) {
	t.Helper()
	if err := ensureMenu(body); err != nil {
		t.Fatal(err)
	}
}

// do sends a request and returns the status, headers and body.
func do(t testing.TB, method, url string, headers map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// as returns a token of role for sub, signed with the stack's secret.
func as(t testing.TB, role, sub string) string {
	t.Helper()
	return testenv.MustToken(t, e2eSecret, role, sub)
}

// opsToken is an operator's token: it may do anything to any order.
func opsToken(t testing.TB) string { return as(t, token.AudienceOps, "e2e-operator") }

// bearer returns the headers of a JSON request with tok (none if empty).
func bearer(tok string) map[string]string {
	h := map[string]string{"Content-Type": "application/json"}
	if tok != "" {
		h["Authorization"] = "Bearer " + tok
	}
	return h
}

// customerOf returns the customer an order body names.
func customerOf(t testing.TB, body string) string {
	t.Helper()
	var b struct {
		CustomerID string `json:"customer_id"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil || b.CustomerID == "" {
		t.Fatalf("no customer_id in %s: %v", body, err)
	}
	return b.CustomerID
}

// placeOrder places an order as the customer its body names and returns
// it; the answer must be 201.
func placeOrder(t testing.TB, key, body string) order {
	t.Helper()
	mustMenu(t, body)
	h := bearer(as(t, token.AudienceCustomer, customerOf(t, body)))
	h["Idempotency-Key"] = key
	code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", h, body)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/orders = %d: %s", code, b)
	}
	var o order
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// move asks for an order's move to status with tok and returns the status
// code of the answer.
func move(t testing.TB, tok, orderID, status string) int {
	t.Helper()
	code, _, _ := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+orderID+"/status", bearer(tok), `{"status":"`+status+`"}`)
	return code
}

// assignRider assigns rider to an order, as an operator.
func assignRider(t testing.TB, orderID, rider string) {
	t.Helper()
	if code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+orderID+"/rider", bearer(opsToken(t)),
		`{"rider_id":"`+rider+`"}`); code != http.StatusOK {
		t.Fatalf("assign rider = %d %s", code, b)
	}
}

// getOrder reads an order as an operator.
func getOrder(t testing.TB, id string) order {
	t.Helper()
	code, _, b := do(t, http.MethodGet, base(ports.Orders)+"/v1/orders/"+id, bearer(opsToken(t)), "")
	if code != http.StatusOK {
		t.Fatalf("GET order = %d: %s", code, b)
	}
	var o order
	_ = json.Unmarshal(b, &o)
	return o
}

// eventually retries check until it returns nil or within passes.
func eventually(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPaid waits until every order is paid.
func waitPaid(t testing.TB, within time.Duration, ids ...string) {
	t.Helper()
	for _, id := range ids {
		eventually(t, within, "order "+id+" paid", func() error {
			if s := getOrder(t, id).Status; s != "paid" {
				return fmt.Errorf("status %s", s)
			}
			return nil
		})
	}
}

// ledger counts, for one order, each consumer's effects.
type ledger struct {
	Orders, Charges, Payments, PaidEvents, Notifications, Emails, AnalyticsRows int
}

func readLedger(t testing.TB, db *pgxpool.Pool, orderID string) ledger {
	t.Helper()
	ctx := context.Background()
	var l ledger
	count := func(dst *int, q string) {
		if err := db.QueryRow(ctx, q, orderID).Scan(dst); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	count(&l.Orders, "SELECT count(*) FROM orders WHERE id = $1")
	count(&l.Payments, "SELECT count(*) FROM payments WHERE order_id = $1")
	count(&l.PaidEvents, "SELECT count(*) FROM outbox WHERE order_id = $1 AND routing_key = 'order.paid'")
	count(&l.Notifications, "SELECT count(*) FROM restaurant_notifications WHERE order_id = $1 AND event_type = 'order.placed'")
	count(&l.Emails, "SELECT count(*) FROM emails_sent WHERE order_id = $1 AND kind = 'order.placed'")
	count(&l.AnalyticsRows, "SELECT count(*) FROM analytics_events WHERE order_id = $1 AND event_type = 'order.placed'")
	var charges []json.RawMessage
	code, _, b := do(t, http.MethodGet, base(ports.Gateway)+"/v1/charges?order_id="+orderID, nil, "")
	if code != 200 || json.Unmarshal(b, &charges) != nil {
		t.Fatalf("gateway charges = %d %s", code, b)
	}
	l.Charges = len(charges)
	return l
}

// wantExactlyOnce waits until an order's every effect happened, then checks
// that each happened exactly once.
func wantExactlyOnce(t testing.TB, db *pgxpool.Pool, orderID string, within time.Duration) {
	t.Helper()
	want := ledger{1, 1, 1, 1, 1, 1, 1}
	eventually(t, within, "ledger of "+orderID, func() error {
		if l := readLedger(t, db, orderID); l != want {
			return fmt.Errorf("ledger %+v, want %+v", l, want)
		}
		return nil
	})
	// Nothing more may trickle in afterwards (a late duplicate).
	time.Sleep(300 * time.Millisecond)
	if l := readLedger(t, db, orderID); l != want {
		t.Fatalf("ledger %+v, want %+v", l, want)
	}
}

func rabbitmqctl(t testing.TB, args ...string) { t.Helper(); run(t, "rabbitmqctl", args...) }

// run runs a command to completion; it must succeed.
func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// managementAPI is the RabbitMQ management API the suite reads.
var managementAPI = "http://127.0.0.1:15672/api"

// management calls RabbitMQ's management API as guest.
func management(t testing.TB, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, managementAPI+path, rd)
	req.SetBasicAuth("guest", "guest")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("management API: %v", err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// queueInfo is what the management API says of a queue.
type queueInfo struct {
	Messages      int `json:"messages"`
	Unacked       int `json:"messages_unacknowledged"`
	Consumers     int `json:"consumers"`
	MessagesReady int `json:"messages_ready"`
}

func queue(t testing.TB, name string) queueInfo {
	t.Helper()
	var q queueInfo
	if code := management(t, http.MethodGet, "/queues/%2F/"+url.PathEscape(name), nil, &q); code != 200 {
		t.Fatalf("queue %s: management API answered %d", name, code)
	}
	return q
}

// peek returns the messages in a queue without removing them.
func peek(t testing.TB, name string) []peeked {
	t.Helper()
	var msgs []peeked
	management(t, http.MethodPost, "/queues/%2F/"+url.PathEscape(name)+"/get",
		map[string]any{"count": 10000, "ackmode": "ack_requeue_true", "encoding": "auto"}, &msgs)
	return msgs
}

type peeked struct {
	RoutingKey string `json:"routing_key"`
	Properties struct {
		MessageID     string         `json:"message_id"`
		CorrelationID string         `json:"correlation_id"` // the order's id
		Headers       map[string]any `json:"headers"`
	} `json:"properties"`
}

func newKey() string { return uuid.NewString() }

func mustDB(t testing.TB) *pgxpool.Pool { return testenv.MustDB(t) }
