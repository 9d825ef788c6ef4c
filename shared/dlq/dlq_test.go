package dlq_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/testenv"
)

// mustWorkQueue declares a work queue of the test's own, bound to the
// orders exchange with key, and deletes it with its DLQ and retry queues
// when the test ends.
func mustWorkQueue(t *testing.T, conn *broker.Conn, key string) string {
	t.Helper()
	q := broker.WorkQueue{Name: "dlqtest-" + uuid.NewString()[:8], Bindings: []string{key}, Retry: []time.Duration{time.Second}}
	ch := mustChannel(t, conn)
	if err := broker.DeclareWorkQueue(ch, q); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ch := mustChannel(t, conn)
		for _, name := range []string{q.Name, broker.DLQ(q.Name), broker.RetryQueue(q.Name, time.Second)} {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Errorf("delete %s: %v", name, err)
			}
		}
	})
	return q.Name
}

func mustChannel(t *testing.T, conn *broker.Conn) *amqp.Channel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	return ch
}

// deadLetter puts a message into queue's DLQ as the consumer does when it
// gives up on one.
func deadLetter(t *testing.T, pub *broker.Publisher, queue, id, key string, deadAt time.Time) {
	t.Helper()
	err := pub.Publish(context.Background(), broker.Message{Exchange: broker.ExchangeDLX, RoutingKey: queue, MessageID: id, Type: key,
		CorrelationID: "order-" + id, Body: []byte(`{"id":"` + id + `"}`), Headers: amqp.Table{
			broker.HeaderReason: broker.ReasonExhausted, broker.HeaderError: "gateway down", broker.HeaderRoutingKey: key,
			broker.HeaderAttempt: int32(4), broker.HeaderQueue: queue, broker.HeaderDeadAt: deadAt.UTC().Format(time.RFC3339Nano)}})
	if err != nil {
		t.Fatal(err)
	}
}

func ids(msgs []dlq.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.ID)
	}
	return out
}

func mustShow(t *testing.T, conn *broker.Conn, queue string) []dlq.Message {
	t.Helper()
	page, err := dlq.Show(context.Background(), conn, queue, 0)
	if err != nil {
		t.Fatal(err)
	}
	return page.Messages
}

// wantLeft waits until queue's DLQ holds exactly want, in that order. A
// requeue reaches a quorum queue a moment after the nack that made it, so
// a look right after an operation can miss what went back.
func wantLeft(t *testing.T, conn *broker.Conn, queue string, want []string) []dlq.Message {
	t.Helper()
	var got []dlq.Message
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = mustShow(t, conn, queue)
		if slices.Equal(ids(got), want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %v, want %v", broker.DLQ(queue), ids(got), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplay: a replay moves exactly the chosen messages back to their
// work queue, where the consumer handles them as first attempts with their
// original routing key and id; the others stay, in their order.
func TestReplay(t *testing.T) {
	conn := testenv.MustBroker(t)
	key := "order.dlqtest." + uuid.NewString()[:8]
	queue := mustWorkQueue(t, conn, key)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()
	now := time.Now()
	var want []string
	for i := range 4 {
		id := fmt.Sprintf("m%d-%s", i, uuid.NewString()[:8])
		deadLetter(t, pub, queue, id, key, now.Add(-time.Duration(4-i)*time.Minute))
		want = append(want, id)
	}
	// One the broker dead-lettered itself (a reject): its original key is
	// only in x-death.
	testenv.Publish(t, pub, broker.ExchangeOrders, key, "rejected-"+uuid.NewString()[:8], "o", []byte(`{}`))
	ch := mustChannel(t, conn)
	testenv.Eventually(t, 5*time.Second, "message in "+queue, func() bool {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			want = append(want, d.MessageId)
			if err := d.Nack(false, false); err != nil {
				t.Fatal(err)
			}
		}
		return ok
	})
	// The broker dead-letters asynchronously: wait for it, so that the
	// rejected message is in the DLQ before anything looks.
	testenv.Eventually(t, 5*time.Second, "5 messages in "+broker.DLQ(queue), func() bool {
		q, err := ch.QueueDeclarePassive(broker.DLQ(queue), true, false, false, false, nil)
		return err == nil && q.Messages == 5
	})

	t.Run("ShowKeepsOrder", func(t *testing.T) {
		msgs := wantLeft(t, conn, queue, want)
		wantLeft(t, conn, queue, want)
		page, err := dlq.Show(context.Background(), conn, queue, 2)
		if err != nil || page.Total != 5 || !slices.Equal(ids(page.Messages), want[:2]) {
			t.Fatalf("show 2 = %+v, %v", page, err)
		}
		m, r := msgs[0], msgs[4]
		if m.Reason != broker.ReasonExhausted || m.RoutingKey != key || m.Attempts != 4 || m.OriginQueue != queue || m.Error != "gateway down" || m.AgeSeconds < 200 {
			t.Errorf("consumer's dead letter shown as %+v", m)
		}
		if r.Reason != "rejected" || r.RoutingKey != key || len(r.Deaths) != 1 {
			t.Errorf("broker's dead letter shown as %+v", r)
		}
	})

	t.Run("ByID", func(t *testing.T) {
		res, err := dlq.Replay(context.Background(), conn, queue, dlq.Selector{IDs: []string{want[1], want[4], "nope"}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Depth != 5 || res.Scanned != 5 || res.Matched != 2 || res.Moved != 2 || len(res.Failed) != 0 || !slices.Equal(res.Missing, []string{"nope"}) {
			t.Fatalf("result %+v", res)
		}
		wantLeft(t, conn, queue, []string{want[0], want[2], want[3]})
		// The consumer sees fresh messages: attempt 1, the original key.
		got := make(chan broker.Delivery, 2)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- broker.Consume(ctx, conn, broker.ConsumerConfig{Queue: queue, Retry: []time.Duration{time.Second}},
				func(_ context.Context, b []broker.Delivery) error { got <- b[0]; return nil }, zaptest.NewLogger(t))
		}()
		defer func() { cancel(); <-done }()
		for range 2 {
			select {
			case d := <-got:
				if d.Attempt != 1 || d.RoutingKey != key || (d.MessageID != want[1] && d.MessageID != want[4]) ||
					d.Headers[broker.HeaderReason] != nil || d.Headers[broker.HeaderReplays] != int32(1) {
					t.Errorf("replayed delivery %+v", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("replayed message not consumed")
			}
		}
	})

	t.Run("OlderThan", func(t *testing.T) {
		res, err := dlq.Replay(context.Background(), conn, queue, dlq.Selector{OlderThan: 90 * time.Second})
		if err != nil || res.Moved != 2 {
			t.Fatalf("result %+v, %v", res, err)
		}
		wantLeft(t, conn, queue, []string{want[3]}) // 1 minute dead
	})

	t.Run("DiscardAll", func(t *testing.T) {
		res, err := dlq.Discard(context.Background(), conn, queue, dlq.Selector{All: true})
		if err != nil || res.Moved != 1 {
			t.Fatalf("result %+v, %v", res, err)
		}
		wantLeft(t, conn, queue, nil)
	})

	t.Run("ErrNoSelection", func(t *testing.T) {
		if _, err := dlq.Replay(context.Background(), conn, queue, dlq.Selector{}); err == nil {
			t.Fatal("replay without a selection")
		}
	})
}

// TestReplayUnroutableStays: when the work queue is gone, the replay comes
// back unroutable and the dead message stays where it is.
func TestReplayUnroutableStays(t *testing.T) {
	conn := testenv.MustBroker(t)
	queue := mustWorkQueue(t, conn, "order.dlqtest."+uuid.NewString()[:8])
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()
	id := uuid.NewString()
	deadLetter(t, pub, queue, id, "order.placed", time.Now())
	if _, err := mustChannel(t, conn).QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	wantLeft(t, conn, queue, []string{id})
	res, err := dlq.Replay(context.Background(), conn, queue, dlq.Selector{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Moved != 0 || len(res.Failed) != 1 || res.Failed[0].ID != id {
		t.Fatalf("result %+v", res)
	}
	wantLeft(t, conn, queue, []string{id})
}

// TestClassicDLQ: a classic dead-letter queue (returned messages go back
// to their old place, not to the back or head as in a quorum queue) keeps
// its order through a show and a replay too.
func TestClassicDLQ(t *testing.T) {
	conn := testenv.MustBroker(t)
	ch := mustChannel(t, conn)
	queue := "dlqtest-classic-" + uuid.NewString()[:8]
	for _, name := range []string{queue, broker.DLQ(queue)} {
		if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeClassic}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ch := mustChannel(t, conn)
		for _, name := range []string{queue, broker.DLQ(queue)} {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Errorf("delete %s: %v", name, err)
			}
		}
	})
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("c%d-%s", i, uuid.NewString()[:8])
		err := pub.Publish(context.Background(), broker.Message{RoutingKey: broker.DLQ(queue), MessageID: id, Body: []byte("{}"),
			Headers: amqp.Table{broker.HeaderRoutingKey: "order.placed", broker.HeaderReason: broker.ReasonPermanent}})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	wantLeft(t, conn, queue, want)
	if page, err := dlq.Show(context.Background(), conn, queue, 1); err != nil || page.Total != 5 || len(page.Messages) != 1 {
		t.Fatalf("show 1 = %+v, %v", page, err)
	}
	res, err := dlq.Replay(context.Background(), conn, queue, dlq.Selector{IDs: []string{want[0], want[3]}})
	if err != nil || res.Moved != 2 {
		t.Fatalf("replay = %+v, %v", res, err)
	}
	wantLeft(t, conn, queue, []string{want[1], want[2], want[4]})
	d, ok, err := ch.Get(queue, true)
	if err != nil || !ok || d.MessageId != want[0] || d.Headers[broker.HeaderRoutingKey] != "order.placed" || d.Headers[broker.HeaderReason] != nil {
		t.Fatalf("replayed = %+v, %v, %v", d, ok, err)
	}
}
