package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func TestHandleEventBatch(t *testing.T) {
	db := testenv.MustDB(t)
	h := handleEventBatch(db)
	ctx := context.Background()
	orderID := uuid.NewString()
	var batch []broker.Delivery
	for _, key := range []string{events.OrderPlaced, events.OrderPaid, events.OrderAccepted} {
		e, _ := events.New(uuid.NewString(), key, orderID, time.Now(), map[string]string{"k": key})
		body, _ := json.Marshal(e)
		batch = append(batch, broker.Delivery{MessageID: e.ID, RoutingKey: key, Body: body, Attempt: 1})
	}
	if err := h(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := h(ctx, batch[1:]); err != nil { // redelivered
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM analytics_events WHERE order_id = $1", orderID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}
	bad := append(batch[:1:1], broker.Delivery{MessageID: uuid.NewString(), Body: []byte("{")})
	if err := h(ctx, bad); !broker.IsPermanent(err) {
		t.Fatalf("a malformed event in a batch: err = %v, want permanent", err)
	}
}
