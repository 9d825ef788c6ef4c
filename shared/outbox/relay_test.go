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

// MustAllSent waits until every row about orderID is marked sent and none
// holds a lease.
func MustAllSent(tb testing.TB, db *pgxpool.Pool, orderID string) {
	tb.Helper()
	testenv.Eventually(tb, 10*time.Second, "every row marked sent", func() bool {
		var left int
		if err := db.QueryRow(context.Background(), "SELECT count(*) FROM outbox WHERE order_id = $1 AND (sent_at IS NULL OR lease_until IS NOT NULL)",
			orderID).Scan(&left); err != nil {
			tb.Fatal(err)
		}
		return left == 0
	})
}

// startRelay runs r until the test ends, and returns a channel that gets a
// value each time r goes idle (found nothing to publish).
func startRelay(tb testing.TB, r *Relay) <-chan struct{} {
	tb.Helper()
	idle := make(chan struct{}, 1)
	r.idle = func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	})
	return idle
}

func mustPublisher(tb testing.TB, conn *broker.Conn) *broker.Publisher {
	tb.Helper()
	pub := broker.NewPublisher(conn, zaptest.NewLogger(tb))
	tb.Cleanup(pub.Close)
	return pub
}

// TestRelayPublishesWithConfirms writes outbox rows, runs the relay and
// finds every event in a queue of the test's own bound to the orders
// exchange, with its rows marked sent. Events written under a trace carry
// it on as a traceparent header (a new span in the same trace); the others
// carry none.
func TestRelayPublishesWithConfirms(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	ctx := context.Background()

	orderID := uuid.NewString()
	const n = 25
	parent := trace.New()
	traced := map[string]bool{}
	for i := range n {
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
	startRelay(t, NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t)))

	timeout := time.After(30 * time.Second)
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
		case <-timeout:
			t.Fatalf("received %d of %d events", len(seen), n)
		}
	}
	MustAllSent(t, db, orderID)
}

// TestRelayWake commits rows while the relay is idle and would not poll
// for an hour: Wake alone gets them published.
func TestRelayWake(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
	r.poll = time.Hour
	idle := startRelay(t, r)
	<-idle

	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)
	r.Wake()
	r.Wake() // coalesces; never blocks
	MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)
}

// TestRelayPollsWithoutWake commits rows while the relay is idle and never
// wakes it: its poll finds them.
func TestRelayPollsWithoutWake(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
	r.poll = 50 * time.Millisecond
	idle := startRelay(t, r)
	<-idle

	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)
	MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)
}

// TestTwoRelays runs two relays, each with its own publisher, over small
// batches: every event arrives (a duplicate would be allowed) and every row
// is marked sent exactly once. A trigger in the test's schema counts the
// marks.
func TestTwoRelays(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	ctx := context.Background()
	_, err := db.Exec(ctx, `
		CREATE TABLE sent_marks (id bigint NOT NULL);
		CREATE FUNCTION count_sent_mark() RETURNS trigger AS $$
		BEGIN
			INSERT INTO sent_marks VALUES (NEW.id);
			RETURN NEW;
		END;
		$$ LANGUAGE plpgsql;
		CREATE TRIGGER count_sent_mark AFTER UPDATE OF sent_at ON outbox
			FOR EACH ROW WHEN (NEW.sent_at IS DISTINCT FROM OLD.sent_at) EXECUTE FUNCTION count_sent_mark();`)
	if err != nil {
		t.Fatal(err)
	}

	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 200)
	var relays []*Relay
	for range 2 {
		r := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
		r.batch = 7
		relays = append(relays, r)
	}
	for _, r := range relays {
		startRelay(t, r)
		r.Wake()
	}
	seen := MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)

	var rows, marks, twice int
	err = db.QueryRow(ctx, `SELECT count(*), (SELECT count(*) FROM sent_marks),
			(SELECT count(*) FROM (SELECT id FROM sent_marks GROUP BY id HAVING count(*) > 1) d)
		FROM outbox WHERE order_id = $1`, orderID).Scan(&rows, &marks, &twice)
	if err != nil {
		t.Fatal(err)
	}
	if marks != rows || twice != 0 {
		t.Fatalf("%d rows, %d marks, %d rows marked more than once", rows, marks, twice)
	}
	dups := 0
	for _, c := range seen {
		dups += c - 1
	}
	t.Logf("%d events, %d duplicates", len(seen), dups)
}

// flakyPublisher publishes through pub but reports its first batch's first
// message unconfirmed without publishing it, as a broker's nack would. On
// the next batch it looks at that message's row: it must be unsent.
type flakyPublisher struct {
	pub *broker.Publisher
	db  *pgxpool.Pool

	mu      sync.Mutex
	calls   int
	dropped string // message id
	unsent  bool   // the dropped row was unsent when the next batch came
}

func (p *flakyPublisher) PublishBatch(ctx context.Context, msgs []broker.Message) ([]bool, error) {
	if len(msgs) == 0 { // the relay asking whether the broker is there
		return p.pub.PublishBatch(ctx, msgs)
	}
	p.mu.Lock()
	p.calls++
	call := p.calls
	if call == 1 {
		p.dropped = msgs[0].MessageID
	}
	dropped := p.dropped
	p.mu.Unlock()
	if call == 1 {
		acked, err := p.pub.PublishBatch(ctx, msgs[1:])
		return append([]bool{false}, acked...), err
	}
	if call == 2 {
		var unsent bool
		err := p.db.QueryRow(ctx, "SELECT sent_at IS NULL FROM outbox WHERE event_id = $1", dropped).Scan(&unsent)
		if err != nil {
			return make([]bool, len(msgs)), err
		}
		p.mu.Lock()
		p.unsent = unsent
		p.mu.Unlock()
	}
	return p.pub.PublishBatch(ctx, msgs)
}

// TestRelayUnconfirmedGoesAgain has the broker leave one event of a batch
// unconfirmed: its row stays unsent while the others are marked, and the
// relay publishes it again after backing off.
func TestRelayUnconfirmedGoesAgain(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 5)

	pub := &flakyPublisher{pub: mustPublisher(t, conn), db: db}
	r := NewRelay(db, pub, zaptest.NewLogger(t))
	r.minBackoff = 10 * time.Millisecond
	startRelay(t, r)
	MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if pub.calls < 2 || !pub.unsent {
		t.Fatalf("%d batches; the unconfirmed row unsent before the next: %v", pub.calls, pub.unsent)
	}
}

// awayPublisher is a broker that cannot be published to until up is
// closed: each time the relay asks whether it can publish, asked gets a
// value first.
type awayPublisher struct {
	pub   *broker.Publisher
	asked chan struct{}
	up    chan struct{}
}

func (p *awayPublisher) PublishBatch(ctx context.Context, msgs []broker.Message) ([]bool, error) {
	if len(msgs) == 0 {
		select {
		case p.asked <- struct{}{}:
			return nil, errors.New("broker away")
		case <-p.up:
		}
	}
	return p.pub.PublishBatch(ctx, msgs)
}

// TestRelayLeasesNothingWhileBrokerAway has the broker away while rows
// wait: the relay leases none of them (a relay that died then would hold
// them back for a lease), and publishes them all once it is back.
func TestRelayLeasesNothingWhileBrokerAway(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 3)

	pub := &awayPublisher{pub: mustPublisher(t, conn), asked: make(chan struct{}), up: make(chan struct{})}
	r := NewRelay(db, pub, zaptest.NewLogger(t))
	r.minBackoff = time.Millisecond
	startRelay(t, r)
	for range 3 {
		<-pub.asked
		var leased int
		err := db.QueryRow(context.Background(), "SELECT count(*) FROM outbox WHERE order_id = $1 AND lease_until IS NOT NULL",
			orderID).Scan(&leased)
		if err != nil {
			t.Fatal(err)
		}
		if leased != 0 {
			t.Fatalf("%d rows leased while the broker is away", leased)
		}
	}
	close(pub.up)
	MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)
}

// TestRelayLeaseExpiry has a relay claim rows and die before publishing
// them. While its lease holds, no other relay takes them; once it has
// passed, another relay publishes them.
func TestRelayLeaseExpiry(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	conn := testenv.MustBroker(t)
	key, msgs := MustQueue(t, conn)
	ctx := context.Background()
	orderID := uuid.NewString()
	want := MustEnqueue(t, db, key, orderID, 4)

	dead := NewRelay(db, nil, zaptest.NewLogger(t))
	dead.lease = 2 * time.Second
	c, err := dead.round(ctx, outcome{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ids) != len(want) {
		t.Fatalf("the first relay claimed %d rows, want %d", len(c.ids), len(want))
	}

	other := NewRelay(db, mustPublisher(t, conn), zaptest.NewLogger(t))
	if c, err := other.round(ctx, outcome{}, true); err != nil || len(c.ids) != 0 {
		t.Fatalf("another relay claimed %d leased rows (err %v)", len(c.ids), err)
	}
	other.poll = 100 * time.Millisecond
	startRelay(t, other)
	MustReceive(t, msgs, key, orderID, want)
	MustAllSent(t, db, orderID)
}

// TestClaimUsesUnsentIndex checks the claim reads outbox_unsent_idx, not the
// whole table, once most rows are sent.
func TestClaimUsesUnsentIndex(t *testing.T) {
	db := testenv.MustOwnSchema(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, `INSERT INTO outbox (event_id, routing_key, order_id, payload, sent_at)
		SELECT gen_random_uuid(), 'order.test', gen_random_uuid(), '\x7b7d', CASE WHEN g % 1000 = 0 THEN NULL ELSE now() END
		FROM generate_series(1, 20000) g`)
	if err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	err = postgres.InTx(ctx, db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "EXPLAIN "+claim, 500, 30000)
		if err != nil {
			return err
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		fmt.Fprintln(&plan, strings.Join(lines, "\n"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan.String(), "outbox_unsent_idx") || strings.Contains(plan.String(), "Seq Scan") {
		t.Fatalf("the claim does not go through outbox_unsent_idx:\n%s", plan.String())
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
