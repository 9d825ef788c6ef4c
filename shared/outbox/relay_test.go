package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/trace"
)

// MustQueue binds a queue of the test's own to the orders exchange under a
// routing key of its own, and returns the key and the queue's deliveries.
func MustQueue(tb testing.TB, conn *broker.Conn) (string, <-chan amqp.Delivery) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := conn.Channel(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ch.Close() })
	key := "test.relay_" + uuid.NewString()[:8]
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, broker.ExchangeOrders, false, nil); err != nil {
		tb.Fatal(err)
	}
	msgs, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return key, msgs
}

// MustEnqueue commits n events about orderID under key, one transaction
// each, and returns their ids.
func MustEnqueue(tb testing.TB, db *pgxpool.Pool, key, orderID string, n int) map[string]bool {
	tb.Helper()
	ids := map[string]bool{}
	for range n {
		err := postgres.InTx(context.Background(), db, func(tx pgx.Tx) error {
			id, err := Enqueue(context.Background(), tx, key, orderID, time.Now(), events.RiderAssigned{RiderID: "r"})
			ids[id] = true
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return ids
}

// MustReceive waits until every event in want has arrived on msgs;
// duplicates are allowed. It returns how many times each arrived.
func MustReceive(tb testing.TB, msgs <-chan amqp.Delivery, key, orderID string, want map[string]bool) map[string]int {
	tb.Helper()
	timeout := time.After(30 * time.Second)
	seen := map[string]int{}
	for len(seen) < len(want) {
		select {
		case d := <-msgs:
			checkDelivery(tb, d, key, orderID)
			if !want[d.MessageId] {
				tb.Fatalf("unexpected event %s", d.MessageId)
			}
			seen[d.MessageId]++
		case <-timeout:
			tb.Fatalf("received %d of %d events", len(seen), len(want))
		}
	}
	return seen
}

// MustPublished waits until the relay's stored position has passed every
// row about orderID.
func MustPublished(tb testing.TB, db *pgxpool.Pool, orderID string) {
	tb.Helper()
	testenv.Eventually(tb, 10*time.Second, "every row published", func() bool {
		var left int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM outbox o WHERE order_id = $1
			AND (o.tx, o.id) > (SELECT tx, id FROM outbox_readers WHERE name = 'relay')`, orderID).Scan(&left); err != nil {
			tb.Fatal(err)
		}
		return left == 0
	})
}

// startRelay runs r until the test ends (or stop is called), and returns a
// channel that gets a value each time r goes idle (found nothing to
// publish).
func startRelay(tb testing.TB, r *Relay) (idle <-chan struct{}, stop func()) {
	tb.Helper()
	idles := make(chan struct{}, 1)
	r.idle = func() {
		select {
		case idles <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Error(err)
			}
		})
	}
	tb.Cleanup(stop)
	return idles, stop
}

func mustPublisher(tb testing.TB, conn *broker.Conn) *broker.Publisher {
	tb.Helper()
	pub := broker.NewPublisher(conn, zaptest.NewLogger(tb))
	tb.Cleanup(pub.Close)
	return pub
}

// TestRelayPublishesWithConfirms writes outbox rows, runs the relay and
// finds every event in a queue of the test's own bound to the orders
// exchange, in the order they were written, with the relay's position past
// them. Events written under a trace carry it on as a traceparent header (a
// new span in the same trace); the others carry none.
func TestRelayPublishesWithConfirms(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	ctx := context.Background()

	orderID := uuid.NewString()
	const n = 25
	parent := trace.New()
	traced := map[string]bool{}
	var written []string
	for i := range n {
		ectx := ctx
		if i%2 == 1 {
			ectx = trace.NewContext(ctx, parent)
		}
		err := postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			id, err := Enqueue(ectx, tx, key, orderID, time.Now(), events.RiderAssigned{RiderID: "r"})
			traced[id] = i%2 == 1
			written = append(written, id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	startRelay(t, NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t)))

	timeout := time.After(30 * time.Second)
	var got []string
	for len(got) < n {
		select {
		case d := <-msgs:
			checkDelivery(t, d, key, orderID)
			got = append(got, d.MessageId)
			tp, _ := d.Headers[trace.Header].(string)
			if traced[d.MessageId] != (tp != "") || (tp != "" && (trace.TraceID(tp) != trace.TraceID(parent) || tp == parent)) {
				t.Errorf("event %s (traced %v) has traceparent %q, want a child of %q", d.MessageId, traced[d.MessageId], tp, parent)
			}
		case <-timeout:
			t.Fatalf("received %d of %d events", len(got), n)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(written) {
		t.Fatalf("published in another order than written:\n got %v\nwant %v", got, written)
	}
	MustPublished(t, db, orderID)
}

// TestRelayWake commits rows while the relay is idle and would not poll
// for an hour: Wake alone gets them published.
func TestRelayWake(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
	r.poll = time.Hour
	idle, _ := startRelay(t, r)
	<-idle

	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)
	r.Wake()
	r.Wake() // coalesces; never blocks
	MustReceive(t, msgs, key, orderID, want)
	MustPublished(t, db, orderID)
}

// TestRelayPollsWithoutWake commits rows while the relay is idle and never
// wakes it: its poll finds them.
func TestRelayPollsWithoutWake(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
	r.poll = 50 * time.Millisecond
	idle, _ := startRelay(t, r)
	<-idle

	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)
	MustReceive(t, msgs, key, orderID, want)
	MustPublished(t, db, orderID)
}

// TestOneRelayPublishes runs two relays, with small batches: one publishes,
// so every event arrives once. When it stops, the other takes over and
// publishes what is written next.
func TestOneRelayPublishes(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 200)
	var stops []func()
	idles := make([]<-chan struct{}, 2)
	for i := range 2 {
		r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
		r.batch, r.standby = 7, 100*time.Millisecond
		var stop func()
		idles[i], stop = startRelay(t, r)
		stops = append(stops, stop)
	}
	seen := MustReceive(t, msgs, key, orderID, want)
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("event %s published %d times", id, n)
		}
	}
	MustPublished(t, db, orderID)
	var leader int
	select {
	case <-idles[0]:
	case <-idles[1]:
		leader = 1
	}
	stops[leader]()
	more := MustEnqueue(t, db, key, orderID, 3)
	MustReceive(t, msgs, key, orderID, more)
	MustPublished(t, db, orderID)
}

// flakyPublisher publishes through pub but reports its first batch's first
// message unconfirmed without publishing it, as a broker's nack would. It
// records what each later batch held, and whether the relay's position was
// still before the dropped message when it came again.
type flakyPublisher struct {
	pub *broker.Publisher
	db  *pgxpool.Pool

	mu      sync.Mutex
	batches [][]string // message ids of each batch
	behind  bool       // the position was before the dropped message when it came again
}

func (p *flakyPublisher) PublishBatch(ctx context.Context, msgs []broker.Message) ([]bool, error) {
	p.mu.Lock()
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.MessageID)
	}
	p.batches = append(p.batches, ids)
	call := len(p.batches)
	p.mu.Unlock()
	switch call {
	case 1:
		acked, err := p.pub.PublishBatch(ctx, msgs[1:])
		return append([]bool{false}, acked...), err
	case 2:
		var behind bool
		err := p.db.QueryRow(ctx, `SELECT (r.tx, r.id) < (o.tx, o.id) FROM outbox o, outbox_readers r
			WHERE o.event_id = $1 AND r.name = 'relay'`, msgs[0].MessageID).Scan(&behind)
		if err != nil {
			return make([]bool, len(msgs)), err
		}
		p.mu.Lock()
		p.behind = behind
		p.mu.Unlock()
	}
	return p.pub.PublishBatch(ctx, msgs)
}

// TestRelayUnconfirmedGoesAgain has the broker leave one event of a batch
// unconfirmed: after a back-off the relay publishes that one again, alone,
// and its position does not pass it until it is confirmed.
func TestRelayUnconfirmedGoesAgain(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 5)

	pub := &flakyPublisher{pub: mustPublisher(t, conn), db: db}
	r := NewRelay(db, pub, zaptest.NewLogger(t))
	r.minBackoff, r.saveEvery = 10*time.Millisecond, 0
	startRelay(t, r)
	seen := MustReceive(t, msgs, key, orderID, want)
	MustPublished(t, db, orderID)
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if len(pub.batches) < 2 || len(pub.batches[1]) != 1 || pub.batches[1][0] != pub.batches[0][0] || !pub.behind {
		t.Fatalf("batches %v, position behind the unconfirmed one: %v; want it again alone, not passed", pub.batches, pub.behind)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("event %s published %d times; the confirmed ones must not go again", id, n)
		}
	}
}

// awayPublisher is a broker that refuses every batch until up is closed;
// asked gets a value at each refusal.
type awayPublisher struct {
	pub   *broker.Publisher
	asked chan struct{}
	up    chan struct{}
}

func (p *awayPublisher) PublishBatch(ctx context.Context, msgs []broker.Message) ([]bool, error) {
	select {
	case p.asked <- struct{}{}:
		return make([]bool, len(msgs)), errors.New("broker away")
	case <-p.up:
	}
	return p.pub.PublishBatch(ctx, msgs)
}

// TestRelayBrokerAway has the broker away while rows wait: the relay backs
// off between tries, its position stays put, and once the broker is back
// it publishes them all.
func TestRelayBrokerAway(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)

	pub := &awayPublisher{pub: mustPublisher(t, conn), asked: make(chan struct{}), up: make(chan struct{})}
	r := NewRelay(db, pub, zaptest.NewLogger(t))
	r.minBackoff = 20 * time.Millisecond
	startRelay(t, r)
	start := time.Now()
	for range 3 {
		<-pub.asked
	}
	// 20 + 40 ms at least between the three tries: no spinning.
	if took := time.Since(start); took < 60*time.Millisecond {
		t.Fatalf("three tries in %v: the relay does not back off", took)
	}
	var unsent int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM outbox o WHERE order_id = $1
		AND (o.tx, o.id) > (SELECT tx, id FROM outbox_readers WHERE name = 'relay')`, orderID).Scan(&unsent); err != nil || unsent != 3 {
		t.Fatalf("%d rows after the relay's position while the broker is away (%v), want 3", unsent, err)
	}
	close(pub.up)
	MustReceive(t, msgs, key, orderID, want)
	MustPublished(t, db, orderID)
}

// TestReadUsesCommitOrderIndex checks a read goes through
// outbox_commit_order_idx, not the whole table, however many rows are
// behind its position.
func TestReadUsesCommitOrderIndex(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, `INSERT INTO outbox (event_id, routing_key, order_id, payload)
		SELECT gen_random_uuid(), 'order.test', gen_random_uuid(), '\x7b7d' FROM generate_series(1, 20000) g`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, "ANALYZE outbox"); err != nil {
		t.Fatal(err)
	}
	head, err := Head(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(ctx, "EXPLAIN "+readSQL, head.Tx, head.ID, []string{}, 500)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "outbox_commit_order_idx") || strings.Contains(plan, "Seq Scan on outbox") {
		t.Fatalf("a read does not go through outbox_commit_order_idx:\n%s", plan)
	}
}

func checkDelivery(tb testing.TB, d amqp.Delivery, key, orderID string) {
	tb.Helper()
	e, err := events.Decode(d.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if d.MessageId != e.ID || d.Type != key || d.CorrelationId != orderID || d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || e.OrderID != orderID {
		tb.Fatalf("delivery properties wrong: %+v", d)
	}
	var p events.RiderAssigned
	if err := json.Unmarshal(e.Data, &p); err != nil || p.RiderID != "r" {
		tb.Fatalf("data = %s", e.Data)
	}
}
