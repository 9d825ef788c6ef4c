package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/dlq"
)

// MustDeadLetter puts event seq (the order's first has 1) of orderID into
// queue's DLQ as the consumer does when it gives up on one, and discards it
// when the test ends; it returns the message id.
func MustDeadLetter(tb testing.TB, conn *broker.Conn, queue, orderID, key string, seq int) string {
	tb.Helper()
	pub := broker.NewPublisher(conn, zaptest.NewLogger(tb))
	defer pub.Close()
	id := uuid.NewString()
	h := amqp.Table{broker.HeaderReason: broker.ReasonExhausted, broker.HeaderError: "restaurant tablet away",
		broker.HeaderRoutingKey: key, broker.HeaderAttempt: int32(4), broker.HeaderQueue: queue,
		broker.HeaderDeadAt: time.Now().UTC().Format(time.RFC3339Nano)}
	broker.SetSequence(h, seq, make([]string, seq-1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, broker.Message{Exchange: broker.ExchangeDLX, RoutingKey: queue, MessageID: id, Type: key,
		CorrelationID: orderID, ContentType: "application/json", Body: []byte(`{"id":"` + id + `"}`), Headers: h}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Whoever else looks at the DLQ meanwhile holds its messages for
		// a moment (dlq.Show takes them all): try until it is gone.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			res, err := dlq.Discard(context.Background(), conn, queue, dlq.Selector{IDs: []string{id}})
			if err == nil && res.Moved == 1 {
				return
			}
			if time.Now().After(deadline) {
				tb.Logf("could not discard %s from %s: %+v, %v", id, broker.DLQ(queue), res, err)
				return
			}
		}
	})
	return id
}

// MustHold writes what queue's consumer stores when event seq of orderID
// (of type key, waiting for event after) comes before its predecessor, as
// held for heldFor; it returns the event's id.
func MustHold(tb testing.TB, db *pgxpool.Pool, queue, orderID, key string, seq, after int, heldFor time.Duration) string {
	tb.Helper()
	id := uuid.NewString()
	if _, err := db.Exec(context.Background(), `INSERT INTO held_events (consumer, event_id, order_id, seq, after, routing_key, prior, body, held_at)
		VALUES ($1, $2, $3, $4, $5, $6, '', '{}', now() - $7 * interval '1 millisecond')`,
		queue, id, orderID, seq, after, key, heldFor.Milliseconds()); err != nil {
		tb.Fatal(err)
	}
	return id
}
