package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

// TestOrderReachesEveryConsumer: an order placed over HTTP is charged,
// announced to its restaurant, e-mailed and recorded by analytics, each
// exactly once, and ends paid.
func TestOrderReachesEveryConsumer(t *testing.T) {
	db := mustDB(t)
	restaurant := "r-" + uuid.NewString()[:8]
	o := placeOrder(t, newKey(), orderJSON("c-"+uuid.NewString(), restaurant, 45000))
	if o.Status != "placed" || o.TotalCents != 45000 || o.TrackingToken == "" {
		t.Fatalf("new order = %+v", o)
	}
	waitPaid(t, 20*time.Second, o.ID)
	wantExactlyOnce(t, db, o.ID, 20*time.Second)

	code, _, b := do(t, http.MethodGet, base(ports.Restaurant)+"/v1/restaurants/"+restaurant+"/orders", bearer(as(t, token.AudienceRestaurant, restaurant)), "")
	var feed struct {
		Notifications []struct {
			OrderID string `json:"order_id"`
			Event   string `json:"event"`
		} `json:"notifications"`
	}
	_ = json.Unmarshal(b, &feed)
	seen := map[string]bool{}
	for _, n := range feed.Notifications {
		if n.OrderID == o.ID {
			seen[n.Event] = true
		}
	}
	if code != 200 || !seen["order.placed"] || !seen["order.paid"] {
		t.Fatalf("restaurant feed = %d %s", code, b)
	}
	var mails []struct {
		DabbaID string `json:"dabba_message_id"`
		Subject string `json:"subject"`
		To      []string
	}
	_, _, b = do(t, http.MethodGet, base(ports.SMTPHTTP)+"/messages", nil, "")
	_ = json.Unmarshal(b, &mails)
	found := 0
	for _, m := range mails {
		if strings.Contains(m.Subject, events.ShortID(o.ID)) {
			found++
		}
	}
	if found < 1 {
		t.Fatalf("no e-mail about order %s in the SMTP inbox", o.ID)
	}
}

// TestOrderLife walks an order through the moves its restaurant and rider
// make, each with its own token, and refuses an illegal one.
func TestOrderLife(t *testing.T) {
	o := placeOrder(t, newKey(), orderJSON("c-"+uuid.NewString(), "r-life", 1000))
	rider := "rider-" + uuid.NewString()[:8]
	assignRider(t, o.ID, rider)
	waitPaid(t, 20*time.Second, o.ID)
	kitchen, bike := as(t, token.AudienceRestaurant, "r-life"), as(t, token.AudienceRider, rider)
	for _, step := range []struct {
		tok, status string
		want        int
	}{{opsToken(t), "delivered", 409}, {kitchen, "accepted", 200}, {bike, "picked_up", 200}, {opsToken(t), "cancelled", 409}, {bike, "delivered", 200}} {
		if got := move(t, step.tok, o.ID, step.status); got != step.want {
			t.Fatalf("move to %s = %d, want %d", step.status, got, step.want)
		}
	}
	got := getOrder(t, o.ID)
	var seq []string
	for _, h := range got.History {
		seq = append(seq, h.Status)
	}
	if strings.Join(seq, ">") != "placed>paid>accepted>picked_up>delivered" {
		t.Fatalf("history %v", seq)
	}
}

// TestRetriedPostCreatesOneOrder: a client retrying with its
// Idempotency-Key, one after another or fifty at once, creates one order.
func TestRetriedPostCreatesOneOrder(t *testing.T) {
	db := mustDB(t)
	customer := "c-" + uuid.NewString()
	key, body := newKey(), orderJSON(customer, "r-idem", 700)
	first := placeOrder(t, key, body)
	headers := func(key string) map[string]string {
		h := bearer(as(t, token.AudienceCustomer, customer))
		h["Idempotency-Key"] = key
		return h
	}
	code, h, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", headers(key), body)
	if code != 201 || h.Get("Idempotent-Replayed") != "true" || !strings.Contains(string(b), first.ID) {
		t.Fatalf("replay = %d %v %s", code, h, b)
	}

	key2, body2 := newKey(), orderJSON(customer, "r-idem", 800)
	mustMenu(t, body2)
	var wg sync.WaitGroup
	codes := make(chan int, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, _ := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", headers(key2), body2)
			codes <- code
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 201 && c != 409 {
			t.Fatalf("a concurrent retry got %d", c)
		}
	}
	var n int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE customer_id = $1", customer).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d orders for the customer, want 2 (one per key)", n)
	}
}

// TestBadInput: every bad request gets a problem+json answer naming its
// fault, and nothing is stored.
func TestBadInput(t *testing.T) {
	good := orderJSON("c-bad", "r-bad", 100)
	ops := "Bearer " + opsToken(t)
	json := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "k-bad", "Authorization": ops}
	tests := []struct {
		name, method, path string
		headers            map[string]string
		body               string
		want               int
	}{
		{"ErrNoIdempotencyKey", "POST", "/v1/orders", map[string]string{"Content-Type": "application/json", "Authorization": ops}, good, 400},
		{"ErrContentType", "POST", "/v1/orders", map[string]string{"Content-Type": "text/plain", "Idempotency-Key": "k", "Authorization": ops}, good, 415},
		{"ErrMalformedJSON", "POST", "/v1/orders", json, `{"customer_id": "c",`, 400},
		{"ErrUnknownField", "POST", "/v1/orders", json, strings.Replace(good, `"email"`, `"mail"`, 1), 400},
		{"ErrNegativeQuantity", "POST", "/v1/orders", json, strings.Replace(good, `"quantity":1`, `"quantity":-1`, 1), 400},
		{"ErrMissingQuantity", "POST", "/v1/orders", json, strings.Replace(good, `"quantity":1,`, ``, 1), 400},
		{"ErrEmptyItems", "POST", "/v1/orders", json, `{"customer_id":"c","restaurant_id":"r","email":"a@b.c","items":[],"delivery_address":{"line1":"x","lat":1,"lng":1}}`, 400},
		{"ErrTooLarge", "POST", "/v1/orders", json, `{"customer_id":"` + strings.Repeat("a", 1<<20+10) + `"}`, 413},
		{"ErrMalformedID", "GET", "/v1/orders/12", json, "", 400},
		{"ErrUnknownOrder", "GET", "/v1/orders/" + uuid.NewString(), json, "", 404},
		{"ErrBadStatus", "POST", "/v1/orders/" + uuid.NewString() + "/status", json, `{"status":"paid"}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, b := do(t, tt.method, base(ports.Orders)+tt.path, tt.headers, tt.body)
			if code != tt.want || h.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s (%s), want %d problem+json", code, b, h.Get("Content-Type"), tt.want)
			}
		})
	}
	t.Run("ErrHeadersTooLarge", func(t *testing.T) {
		// The server refuses these itself, before any handler: plain 431.
		h := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "k-bad", "Authorization": ops, "X-Padding": strings.Repeat("a", 100<<10)}
		if code, _, b := do(t, "POST", base(ports.Orders)+"/v1/orders", h, good); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%d %s, want 431", code, b)
		}
	})
	var n int
	if err := mustDB(t).QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE customer_id IN ('c-bad', 'c')").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d orders stored from bad requests", n)
	}
}

// TestPoisonMessagesAreDeadLettered: an unparseable event goes to each
// consumer's DLQ at once; one that keeps failing goes there after its
// retries (1 s, 5 s, 30 s), with the reason.
func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	conn := testenv.MustBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	publish := func(key, id string, body []byte) {
		t.Helper()
		if err := ch.PublishWithContext(ctx, "orders", key, false, false, amqp.Publishing{MessageId: id, ContentType: "application/json",
			DeliveryMode: amqp.Persistent, Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	garbage := uuid.NewString()
	publish("order.placed", garbage, []byte(`{"this is": "not an order event"`))
	for _, q := range []string{"payment.dlq", "restaurant-notify.dlq", "email.dlq", "analytics.dlq"} {
		eventually(t, 15*time.Second, "garbage in "+q, func() error { return findDead(t, q, garbage, "permanent-error") })
	}

	// order.paid for an order that does not exist: the restaurant consumer
	// cannot find its restaurant and retries until it gives up.
	unknown := uuid.NewString()
	body := fmt.Sprintf(`{"id":%q,"type":"order.paid","occurred_at":%q,"order_id":%q,"data":{"charge_id":"ch_x","amount_cents":1}}`,
		unknown, time.Now().UTC().Format(time.RFC3339Nano), uuid.NewString())
	publish("order.paid", unknown, []byte(body))
	eventually(t, 70*time.Second, "retried event in restaurant-notify.dlq", func() error {
		return findDead(t, "restaurant-notify.dlq", unknown, "retries-exhausted")
	})
}

func findDead(t testing.TB, queue, id, reason string) error {
	for _, m := range peek(t, queue) {
		if m.Properties.MessageID == id {
			if got := m.Properties.Headers["x-dabba-reason"]; got != reason {
				return fmt.Errorf("dead letter reason %v, want %s", got, reason)
			}
			return nil
		}
	}
	return fmt.Errorf("message %s not in %s", id, queue)
}
