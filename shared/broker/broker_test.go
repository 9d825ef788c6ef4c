package broker

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/events"
)

func brokerURLs() []string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return ParseURLs(u)
	}
	return []string{"amqp://guest:guest@127.0.0.1:5672/"}
}

// MustConn dials the test broker and closes the connection with the test.
func MustConn(tb testing.TB) *Conn {
	tb.Helper()
	c := Dial(brokerURLs(), "test-"+tb.Name(), zaptest.NewLogger(tb))
	tb.Cleanup(func() { c.Close() })
	return c
}

// mustTestQueue declares a work queue of the test's own, bound to a routing
// key of its own, with a short retry ladder, and deletes it afterwards.
func mustTestQueue(tb testing.TB, c *Conn, retry []time.Duration) WorkQueue {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer ch.Close()
	if err := Declare(ch); err != nil {
		tb.Fatal(err)
	}
	id := uuid.NewString()[:8]
	q := WorkQueue{Name: "test-" + id, Bindings: []string{"test." + id}, Retry: retry}
	if err := DeclareWorkQueue(ch, q); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ch, err := c.Channel(context.Background())
		if err != nil {
			return
		}
		defer ch.Close()
		for _, name := range append([]string{q.Name, DLQ(q.Name)}, retryNames(q)...) {
			_, _ = ch.QueueDelete(name, false, false, false)
		}
	})
	return q
}

func retryNames(q WorkQueue) []string {
	var names []string
	for _, d := range q.retry() {
		names = append(names, RetryQueue(q.Name, d))
	}
	return names
}

func publishTest(tb testing.TB, p *Publisher, key, id string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Publish(ctx, Message{Exchange: ExchangeOrders, RoutingKey: key, MessageID: id, Type: key, CorrelationID: "o-" + id, Body: []byte(`{}`)})
	if err != nil {
		tb.Fatal(err)
	}
}

// waitGet polls a queue with basic.get until a message arrives.
func waitGet(tb testing.TB, c *Conn, queue string, within time.Duration) amqp.Delivery {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer ch.Close()
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			tb.Fatal(err)
		}
		if ok {
			return d
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("no message in %s within %s", queue, within)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestEveryRoutingKeyIsBound(t *testing.T) {
	for _, key := range events.RoutingKeys {
		bound := false
		for _, q := range WorkQueues {
			bound = bound || q.Binds(key)
		}
		if !bound {
			t.Errorf("routing key %q reaches no queue", key)
		}
	}
}

func TestConsume(t *testing.T) {
	t.Parallel()
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()

	t.Run("OK", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{100 * time.Millisecond})
		got := make(chan Delivery, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
			got <- d
			return nil
		}), zaptest.NewLogger(t))
		publishTest(t, p, q.Bindings[0], "m1")
		select {
		case d := <-got:
			if d.MessageID != "m1" || d.RoutingKey != q.Bindings[0] || d.Attempt != 1 || d.CorrelationID != "o-m1" {
				t.Fatalf("delivery = %+v", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery")
		}
	})

	t.Run("RetryThenSucceed", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond})
		var calls atomic.Int32
		done := make(chan Delivery, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
			if calls.Add(1) < 3 {
				return errors.New("gateway down")
			}
			done <- d
			return nil
		}), zaptest.NewLogger(t))
		publishTest(t, p, q.Bindings[0], "m2")
		select {
		case d := <-done:
			if d.Attempt != 3 || d.RoutingKey != q.Bindings[0] || d.MessageID != "m2" {
				t.Fatalf("third delivery = %+v", d)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("not retried to success; calls = %d", calls.Load())
		}
	})

	t.Run("ErrExhaustedGoesToDLQ", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
		var calls atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
			calls.Add(1)
			return errors.New("still down")
		}), zaptest.NewLogger(t))
		publishTest(t, p, q.Bindings[0], "m3")
		d := waitGet(t, c, DLQ(q.Name), 15*time.Second)
		if d.MessageId != "m3" || d.Headers[HeaderReason] != ReasonExhausted || d.Headers[HeaderRoutingKey] != q.Bindings[0] {
			t.Fatalf("dead letter = %+v headers %v", d.MessageId, d.Headers)
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("handler called %d times, want 2 (first try + one retry)", n)
		}
	})

	t.Run("ErrPermanentGoesToDLQAtOnce", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
		var calls atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
			calls.Add(1)
			_, err := events.Decode(d.Body) // "{}" is not a valid envelope
			return err
		}), zaptest.NewLogger(t))
		publishTest(t, p, q.Bindings[0], "m4")
		d := waitGet(t, c, DLQ(q.Name), 10*time.Second)
		if d.Headers[HeaderReason] != ReasonPermanent || !strings.Contains(d.Headers[HeaderError].(string), "malformed") {
			t.Fatalf("dead letter headers %v", d.Headers)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler called %d times, want 1", n)
		}
	})

	t.Run("PanicIsRetried", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
		var calls atomic.Int32
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
			if calls.Add(1) == 1 {
				panic("boom")
			}
			close(done)
			return nil
		}), zaptest.NewLogger(t))
		publishTest(t, p, q.Bindings[0], "m5")
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("panicking handler not retried")
		}
	})
}

func TestConsumeBatch(t *testing.T) {
	t.Parallel()
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()

	t.Run("OK", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
		sizes := make(chan int, 100)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for i := 0; i < 30; i++ {
			publishTest(t, p, q.Bindings[0], uuid.NewString())
		}
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry, Batch: 10, Wait: 200 * time.Millisecond},
			func(ctx context.Context, b []Delivery) error {
				sizes <- len(b)
				return nil
			}, zaptest.NewLogger(t))
		total := 0
		for total < 30 {
			select {
			case n := <-sizes:
				if n > 10 {
					t.Fatalf("batch of %d, max is 10", n)
				}
				total += n
			case <-time.After(10 * time.Second):
				t.Fatalf("got %d of 30", total)
			}
		}
	})

	t.Run("PoisonIsIsolated", func(t *testing.T) {
		t.Parallel()
		q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		publishTest(t, p, q.Bindings[0], "good-1")
		publishTest(t, p, q.Bindings[0], "poison")
		publishTest(t, p, q.Bindings[0], "good-2")
		stored := make(chan string, 10)
		go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry, Batch: 10, Wait: 300 * time.Millisecond},
			func(ctx context.Context, b []Delivery) error {
				for _, d := range b {
					if d.MessageID == "poison" {
						return Permanent(errors.New("cannot store"))
					}
				}
				for _, d := range b {
					stored <- d.MessageID
				}
				return nil
			}, zaptest.NewLogger(t))
		d := waitGet(t, c, DLQ(q.Name), 10*time.Second)
		if d.MessageId != "poison" {
			t.Fatalf("dead-lettered %q, want poison", d.MessageId)
		}
		got := map[string]bool{}
		for len(got) < 2 {
			select {
			case id := <-stored:
				got[id] = true
			case <-time.After(5 * time.Second):
				t.Fatalf("stored %v, want good-1 and good-2", got)
			}
		}
	})
}

// TestConsumeFinishesInFlightOnShutdown cancels a consumer while its handler
// is working: the handler runs to the end, the message is acked, and the
// messages not yet started stay in the queue for the next consumer.
func TestConsumeFinishesInFlightOnShutdown(t *testing.T) {
	t.Parallel()
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()
	q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
	for _, id := range []string{"first", "second", "third"} {
		publishTest(t, p, q.Bindings[0], id)
	}
	started, release := make(chan string, 3), make(chan struct{})
	var finished atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry, Prefetch: 3}, one(func(ctx context.Context, d Delivery) error {
			started <- d.MessageID
			<-release
			if ctx.Err() != nil {
				return ctx.Err() // the handler's context must outlive the consumer's
			}
			finished.Add(1)
			return nil
		}), zaptest.NewLogger(t))
	}()
	if id := <-started; id != "first" {
		t.Fatalf("first handled %s", id)
	}
	cancel()
	time.Sleep(100 * time.Millisecond) // let the cancellation reach the consumer
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if finished.Load() != 1 {
		t.Fatalf("%d handlers finished, want 1", finished.Load())
	}
	ch, err := c.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	eventuallyDepth(t, ch, q.Name, 2)
}

// one turns a handler of single messages into a BatchHandler, for
// consumers whose Batch is 1.
func one(h func(ctx context.Context, d Delivery) error) BatchHandler {
	return func(ctx context.Context, b []Delivery) error { return h(ctx, b[0]) }
}

func eventuallyDepth(t *testing.T, ch *amqp.Channel, queue string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		qi, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if qi.Messages == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d messages, want %d", queue, qi.Messages, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRetireQueues: a retired work queue goes with its retry queues, even
// holding messages; its dead-letter queue stays while it holds any, and
// goes once empty. Retiring what is not there is a no-op.
func TestRetireQueues(t *testing.T) {
	c := MustConn(t)
	q := mustTestQueue(t, c, nil)
	pub := NewPublisher(c, zaptest.NewLogger(t))
	defer pub.Close()
	publishTest(t, pub, q.Bindings[0], uuid.NewString())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, Message{Exchange: ExchangeDLX, RoutingKey: q.Name, MessageID: uuid.NewString(), Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	exists := func(name string) bool {
		ch, err := c.Channel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release(ch)
		_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err == nil
	}
	if err := retire(ctx, c, []string{q.Name, "never-declared-" + uuid.NewString()[:8]}); err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{q.Name}, retryNames(q)...) {
		if exists(name) {
			t.Errorf("%s still there", name)
		}
	}
	if !exists(DLQ(q.Name)) {
		t.Fatal("the DLQ went while it held a message")
	}
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueuePurge(DLQ(q.Name), false); err != nil {
		t.Fatal(err)
	}
	c.Release(ch)
	if err := retire(ctx, c, []string{q.Name}); err != nil {
		t.Fatal(err)
	}
	if exists(DLQ(q.Name)) {
		t.Fatal("the empty DLQ is still there")
	}
}
