package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/service"
)

// MustRun starts a service's run in-process on a free port, with env over
// the process environment, and returns its base URL once /readyz answers
// 200. The service is stopped, and must stop cleanly, when the test ends.
func MustRun(tb testing.TB, run service.RunFunc, env map[string]string) string {
	tb.Helper()
	addr := FreeAddr(tb)
	overrides := map[string]string{"HTTP_ADDR": addr, "LOG_LEVEL": "warn"}
	for k, v := range env {
		overrides[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, Getenv(overrides), io.Discard) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("run: %v", err)
		}
	})
	base := "http://" + addr
	Eventually(tb, 20*time.Second, "service ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

// Eventually polls cond until it holds, failing the test after within.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Publish publishes body with the properties the outbox relay sets.
func Publish(tb testing.TB, pub *broker.Publisher, exchange, key, messageID, orderID string, body []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, broker.Message{Exchange: exchange, RoutingKey: key, MessageID: messageID, Type: key,
		CorrelationID: orderID, Body: body}); err != nil {
		tb.Fatal(err)
	}
}

// MustDeadLettered waits until the message with messageID is in queue's
// dead-letter queue, takes it out and returns it. Other tests share the DLQ:
// their messages are left unacked while looking and go back when the channel
// closes.
func MustDeadLettered(tb testing.TB, conn *broker.Conn, queue, messageID string) amqp.Delivery {
	tb.Helper()
	var found amqp.Delivery
	Eventually(tb, 30*time.Second, "message "+messageID+" in "+broker.DLQ(queue), func() bool {
		var ok bool
		found, ok = takeDead(tb, conn, broker.DLQ(queue), messageID)
		return ok
	})
	return found
}

func takeDead(tb testing.TB, conn *broker.Conn, dlq, messageID string) (amqp.Delivery, bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := conn.Channel(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer ch.Close()
	for {
		m, ok, err := ch.Get(dlq, false)
		if err != nil {
			tb.Fatalf("get from %s: %v", dlq, err)
		}
		if !ok {
			return amqp.Delivery{}, false
		}
		if m.MessageId == messageID {
			if err := m.Ack(false); err != nil {
				tb.Fatal(err)
			}
			return m, true
		}
	}
}

// Delivery wraps a new event about orderID, with data as its payload, as a
// first delivery from queue: what a handler receives.
func Delivery(tb testing.TB, queue, key, orderID string, data any) broker.Delivery {
	tb.Helper()
	e, err := events.New(uuid.NewString(), key, orderID, time.Now(), data)
	if err != nil {
		tb.Fatal(err)
	}
	body, err := json.Marshal(e)
	if err != nil {
		tb.Fatal(err)
	}
	return broker.Delivery{Queue: queue, MessageID: e.ID, RoutingKey: key, Type: key, CorrelationID: orderID, Body: body, Attempt: 1}
}

// AllPermanent reports whether a consumer's answer to a batch of n
// deliveries dead-letters at least one of them and retries none: a
// permanent error for the whole batch, or broker.Failures that are all
// permanent.
func AllPermanent(err error, n int) bool {
	if broker.IsPermanent(err) {
		return true
	}
	var f broker.Failures
	if !errors.As(err, &f) || len(f) == 0 || len(f) > n {
		return false
	}
	for _, ferr := range f {
		if !broker.IsPermanent(ferr) {
			return false
		}
	}
	return true
}
