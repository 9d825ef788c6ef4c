package broker

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"
)

// TestSurvivesBrokerRestart stops and starts the local broker's application
// and checks that a consumer and a publisher carry on by themselves. It
// disturbs every other user of the broker, so it runs only when asked
// (DABBA_FAULTS=1, as make test-faults does) with the e2e fault suite.
func TestSurvivesBrokerRestart(t *testing.T) {
	if os.Getenv("DABBA_FAULTS") == "" {
		t.Skip("disturbs the shared broker: run with DABBA_FAULTS=1 (make test-faults)")
	}
	c := MustConn(t)
	log := zaptest.NewLogger(t)
	q := mustTestQueue(t, c, []time.Duration{100 * time.Millisecond})
	p := NewPublisher(c, log)
	defer p.Close()
	got := make(chan string, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
		got <- d.MessageID
		return nil
	}), log)
	publishTest(t, p, q.Bindings[0], "before")
	expect(t, got, "before")

	for _, cmd := range [][]string{{"rabbitmqctl", "stop_app"}, {"rabbitmqctl", "start_app"}} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	id := uuid.NewString()
	deadline := time.Now().Add(60 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.Publish(pctx, Message{Exchange: ExchangeOrders, RoutingKey: q.Bindings[0], MessageID: id, Body: []byte(`{}`)})
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publisher did not recover: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	expect(t, got, id)
	if c.Reconnects.Load() == 0 {
		t.Error("no reconnect counted")
	}
}

func expect(t *testing.T, got <-chan string, id string) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case g := <-got:
			if g == id {
				return
			}
		case <-timeout:
			t.Fatalf("message %s never consumed", id)
		}
	}
}
