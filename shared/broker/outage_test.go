package broker

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"
)

// queueDepth returns the messages ready in queue and those delivered but
// not acked.
func queueDepth(tb testing.TB, c *Conn, queue string) (ready, unacked int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Release(ch)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return q.Messages, q.Consumers // Consumers: for the caller to see the consumer is there
}

// TestOutageHoldsMessages has a dependency down while messages arrive: the
// consumer keeps what it holds unacked, spends none of their retries (no
// copy goes to a retry queue or the DLQ, the attempt stays 1), takes no new
// work, says what it waits for, and once the dependency answers handles
// each message once, the first alone.
func TestOutageHoldsMessages(t *testing.T) {
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()
	q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var handled []string   // message ids of calls made while the dependency was up
	var batches [][]string // every call's message ids
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry, Prefetch: 4, Batch: 4},
		func(ctx context.Context, b []Delivery) error {
			var ids []string
			for _, d := range b {
				if d.Attempt != 1 {
					t.Errorf("%s on attempt %d: an outage spent its retries", d.MessageID, d.Attempt)
				}
				ids = append(ids, d.MessageID)
			}
			mu.Lock()
			defer mu.Unlock()
			batches = append(batches, ids)
			if down.Load() {
				return Unavailable("gateway", errors.New("connection refused"))
			}
			handled = append(handled, ids...)
			return nil
		}, zaptest.NewLogger(t))
	var want []string
	for range 10 {
		id := uuid.NewString()
		want = append(want, id)
		publishTest(t, p, q.Bindings[0], id)
	}
	// It waits, and says so; what it has not taken stays in the queue.
	deadline := time.Now().Add(10 * time.Second)
	for c.Waiting()[q.Name] != "gateway" {
		if time.Now().After(deadline) {
			t.Fatalf("the consumer does not say it waits: %v", c.Waiting())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a few probes
	if ready, _ := queueDepth(t, c, q.Name); ready < 10-4 {
		t.Fatalf("%d messages left in the queue while the dependency was down: it took new work", ready)
	}
	mu.Lock()
	for _, b := range batches[1:] {
		if len(b) != 1 {
			t.Errorf("probe of %d messages; a probe is one", len(b))
		}
	}
	mu.Unlock()
	for _, name := range []string{RetryQueue(q.Name, q.Retry[0]), DLQ(q.Name)} {
		if n, _ := queueDepth(t, c, name); n != 0 {
			t.Fatalf("%d messages in %s during an outage", n, name)
		}
	}

	down.Store(false)
	deadline = time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(handled)
		mu.Unlock()
		if n >= len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled %d of %d after the dependency came back", n, len(want))
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	got := slices.Clone(handled)
	mu.Unlock()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("handled %v, want each of %v once", got, want)
	}
	if w := c.Waiting(); len(w) != 0 {
		t.Fatalf("still waiting: %v", w)
	}
	time.Sleep(200 * time.Millisecond) // the last acks
	if ready, _ := queueDepth(t, c, q.Name); ready != 0 {
		t.Fatalf("%d messages left", ready)
	}
}

// TestOutageSomeOfABatch: a batch whose messages fail for want of a
// dependency while the others succeed acks the others alone (a multiple ack
// would take the held ones too) and holds the failed ones.
func TestOutageSomeOfABatch(t *testing.T) {
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()
	q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
	ids := []string{"a-" + uuid.NewString(), "b-" + uuid.NewString(), "c-" + uuid.NewString()}
	for _, id := range ids {
		publishTest(t, p, q.Bindings[0], id)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry, Batch: 3, Wait: time.Second},
		func(ctx context.Context, b []Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			failures := Failures{}
			for i, d := range b {
				calls[d.MessageID]++
				// b fails for want of its dependency the first time only.
				if d.MessageID == ids[1] && calls[d.MessageID] == 1 {
					failures[i] = Unavailable("smtp", errors.New("451 try later"))
				}
			}
			if calls[ids[1]] == 2 {
				close(done)
			}
			if len(failures) > 0 {
				return failures
			}
			return nil
		}, zaptest.NewLogger(t))
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the held message was not tried again")
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if calls[ids[0]] != 1 || calls[ids[2]] != 1 || calls[ids[1]] != 2 {
		t.Fatalf("calls %v: want the held one twice, the others once", calls)
	}
	if ready, _ := queueDepth(t, c, q.Name); ready != 0 {
		t.Fatalf("%d messages back in the queue", ready)
	}
}

// TestUnroutableCopyIsKept: a retry copy no queue takes (its retry queue
// was deleted) comes back instead of being confirmed and dropped, so the
// original is kept, and moved on once the retry queue exists again.
func TestUnroutableCopyIsKept(t *testing.T) {
	c := MustConn(t)
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()
	q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retryQueue := RetryQueue(q.Name, q.Retry[0])
	if _, err := ch.QueueDelete(retryQueue, false, false, false); err != nil {
		t.Fatal(err)
	}
	c.Release(ch)
	var calls atomic.Int32
	done := make(chan Delivery, 1)
	go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
		if calls.Add(1) == 1 {
			return errors.New("try again later")
		}
		done <- d
		return nil
	}), zaptest.NewLogger(t))
	id := uuid.NewString()
	publishTest(t, p, q.Bindings[0], id)
	deadline := time.Now().Add(10 * time.Second)
	for c.Waiting()[q.Name] != "broker" {
		if time.Now().After(deadline) {
			t.Fatal("the consumer does not wait for the broker while its retry copy bounces")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ready, _ := queueDepth(t, c, q.Name); ready != 0 {
		t.Fatal("the original went back to its queue")
	}
	ch, err = c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := DeclareWorkQueue(ch, q); err != nil {
		t.Fatal(err)
	}
	c.Release(ch)
	select {
	case d := <-done:
		if d.MessageID != id || d.Attempt != 2 {
			t.Fatalf("retried %s on attempt %d, want %s on 2", d.MessageID, d.Attempt, id)
		}
	case <-ctx.Done():
		t.Fatal("the message was not retried once its retry queue was back")
	}
}

func TestHeaderInt(t *testing.T) {
	tests := []struct {
		give any
		want int
	}{
		{int32(3), 3},
		{int64(2), 2},
		{int32(-1), 0},
		{int64(math.MaxInt64), 0},
		{int64(math.MinInt64), 0},
		{"7", 0},
		{nil, 0},
	}
	for _, tt := range tests {
		if got := headerInt(amqp.Table{HeaderAttempt: tt.give}, HeaderAttempt); got != tt.want {
			t.Errorf("headerInt(%v) = %d, want %d", tt.give, got, tt.want)
		}
		// The attempt it makes always indexes the ladder.
		d := newDelivery("q", amqp.Delivery{Headers: amqp.Table{HeaderAttempt: tt.give}})
		if d.Attempt < 1 {
			t.Errorf("attempt %d from header %v", d.Attempt, tt.give)
		}
	}
}

// TestRecoveredConnectionStartsUnblocked: a blocked flag from the
// connection that was lost does not outlive its recovery (amqp091-go sends
// no "unblocked" for the new one).
func TestRecoveredConnectionStartsUnblocked(t *testing.T) {
	c := &Conn{log: zaptest.NewLogger(t)}
	blockings := make(chan amqp.Blocking, 1)
	blockings <- amqp.Blocking{Active: true, Reason: "disk"}
	go c.watchBlocked(blockings) // the old connection's, never closed
	deadline := time.Now().Add(5 * time.Second)
	for !c.Blocked() {
		if time.Now().After(deadline) {
			t.Fatal("not blocked")
		}
		time.Sleep(time.Millisecond)
	}
	c.onState(amqp.StateReconnecting)
	c.onState(amqp.StateOpen)
	if c.Blocked() {
		t.Fatal("still blocked after the connection was recovered")
	}
}

// TestSessionBackoff: the pause before a new session grows while sessions
// keep failing and starts over after a healthy one.
func TestSessionBackoff(t *testing.T) {
	tests := []struct {
		wait, lasted, want time.Duration
	}{
		{100 * time.Millisecond, time.Second, 200 * time.Millisecond},
		{4 * time.Second, time.Second, 5 * time.Second},
		{5 * time.Second, time.Second, 5 * time.Second},
		{5 * time.Second, 2 * time.Minute, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := nextSessionWait(tt.wait, tt.lasted); got != tt.want {
			t.Errorf("nextSessionWait(%v, %v) = %v, want %v", tt.wait, tt.lasted, got, tt.want)
		}
	}
}
