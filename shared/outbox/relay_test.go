package outbox

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/trace"
)

// TestRelayPublishesWithConfirms writes outbox rows, runs the relay and
// finds every event in a queue of the test's own bound to the orders
// exchange, with its rows marked sent. Events written under a trace carry
// it on as a traceparent header (a new span in the same trace); the others
// carry none.
func TestRelayPublishesWithConfirms(t *testing.T) {
	db := testenv.MustDB(t)
	log := zaptest.NewLogger(t)
	conn := testenv.MustBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	// The test's own routing key keeps other tests' events out of its queue.
	key := "order.test_" + uuid.NewString()[:8]
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, broker.ExchangeOrders, false, nil); err != nil {
		t.Fatal(err)
	}

	orderID := uuid.NewString()
	const n = 25
	parent := trace.New()
	traced := map[string]bool{}
	for i := 0; i < n; i++ {
		ectx := ctx
		if i%2 == 1 {
			ectx = trace.NewContext(ctx, parent)
		}
		err := postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			id, err := Enqueue(ectx, tx, key, orderID, time.Now(), events.RiderAssigned{RiderID: "r"})
			traced[id] = i%2 == 1
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	pub := broker.NewPublisher(conn, log)
	defer pub.Close()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go NewRelay(db, pub, log).Run(rctx)

	msgs, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case d := <-msgs:
			checkDelivery(t, d, key, orderID)
			seen[d.MessageId] = true
			tp, _ := d.Headers[trace.Header].(string)
			if traced[d.MessageId] != (tp != "") || (tp != "" && (trace.TraceID(tp) != trace.TraceID(parent) || tp == parent)) {
				t.Errorf("event %s (traced %v) has traceparent %q, want a child of %q", d.MessageId, traced[d.MessageId], tp, parent)
			}
		case <-ctx.Done():
			t.Fatalf("received %d of %d events", len(seen), n)
		}
	}
	var unsent int
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := db.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE order_id = $1 AND sent_at IS NULL", orderID).Scan(&unsent); err != nil {
			t.Fatal(err)
		}
		if unsent == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows still unsent after the broker got them all", unsent)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkDelivery(t *testing.T, d amqp.Delivery, key, orderID string) {
	t.Helper()
	e, err := events.Decode(d.Body)
	if err != nil {
		t.Fatal(err)
	}
	if d.MessageId != e.ID || d.Type != key || d.CorrelationId != orderID || d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || e.OrderID != orderID {
		t.Fatalf("delivery properties wrong: %+v", d)
	}
	var p events.RiderAssigned
	if err := json.Unmarshal(e.Data, &p); err != nil || p.RiderID != "r" {
		t.Fatalf("data = %s", e.Data)
	}
}
