package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/events"
)

// Exchange names.
const (
	// ExchangeOrders is the topic exchange every order event is published to.
	ExchangeOrders = "orders"
	// ExchangeDLX receives what a work queue gives up on; each work queue has
	// a dead-letter queue bound to it with the work queue's name as key.
	ExchangeDLX = "orders.dlx"
	// ExchangeUnroutable is ExchangeOrders' alternate exchange: an event no
	// queue is bound for lands in QueueUnroutable instead of vanishing.
	ExchangeUnroutable = "orders.unroutable"
	// QueueUnroutable holds events no binding matched.
	QueueUnroutable = "orders.unroutable"
	// ExchangeLocations is the topic exchange riders' fixes go to, with
	// routing key "rider.<rider_id>".
	ExchangeLocations = "locations"
)

// Work queue names.
const (
	QueuePayment    = "payment"
	QueueRestaurant = "restaurant-notify"
	QueueEmail      = "email"
	QueueAnalytics  = "analytics"
)

// WorkQueue is a durable quorum queue fed by the orders exchange, with its
// retry ladder and dead-letter queue, and how its consumer takes from it.
type WorkQueue struct {
	Name     string
	Bindings []string // routing keys on ExchangeOrders
	// Retry is the queue's retry ladder; nil means RetryDelays.
	Retry []time.Duration
	// Workers, Prefetch, Batch and Wait are its consumer's (see
	// ConsumerConfig): batches in hand at once, unacked messages per
	// worker, messages per batch, and how long a batch waits to fill.
	Workers, Prefetch, Batch int
	Wait                     time.Duration
	// Ordered: the consumer applies each order's events in the order they
	// were written, whatever the workers, instances, retries and replays
	// (shared/consumer).
	Ordered bool
}

// Binds reports whether one of q's bindings on the topic exchange matches
// routing key ("order.#" matches every "order.…").
func (q WorkQueue) Binds(key string) bool {
	for _, b := range q.Bindings {
		if b == key || strings.HasSuffix(b, ".#") && strings.HasPrefix(key, strings.TrimSuffix(b, "#")) {
			return true
		}
	}
	return false
}

// Config is the consumer configuration of q.
func (q WorkQueue) Config() ConsumerConfig {
	return ConsumerConfig{Queue: q.Name, Workers: q.Workers, Prefetch: q.Prefetch, Batch: q.Batch, Wait: q.Wait, Retry: q.retry()}
}

// LookupWorkQueue returns the row of WorkQueues named name.
func LookupWorkQueue(name string) (WorkQueue, bool) {
	for _, q := range WorkQueues {
		if q.Name == name {
			return q, true
		}
	}
	return WorkQueue{}, false
}

func (q WorkQueue) retry() []time.Duration {
	if q.Retry == nil {
		return RetryDelays
	}
	return q.Retry
}

// WorkQueues is the topology of the order flow: one table, declared by every
// service at start (declaring again is a no-op, so start order never
// matters). A row is also its consumer's configuration.
//
// Batches are what has arrived when a worker is free, up to Batch, so they
// grow with the load: one transaction and one multiple ack per batch. Two
// workers let one batch commit while the next is handled; the prefetch is
// twice the batch so the next batch is already here when a worker is free.
// Payment's batch is smaller because each of its messages waits on the
// payment provider (called concurrently for a batch); e-mail's is cut down
// further by the provider's rate limit (services/email); the consumers
// nobody's payment waits on let a batch fill for longer (sideWait, and
// 100 ms for analytics). Analytics alone is not Ordered: its rows carry
// each event's time, so the order they arrive in does not matter.
var WorkQueues = []WorkQueue{
	{Name: QueuePayment, Bindings: []string{events.OrderPlaced, events.OrderCancelled}, Workers: 1, Prefetch: 128, Batch: 64, Wait: batchWait, Ordered: true},
	{Name: QueueRestaurant, Bindings: []string{events.OrderPlaced, events.OrderPaid, events.OrderCancelled, events.OrderRefunded, events.OrderRiderArriving}, Workers: 1, Prefetch: 512, Batch: 256, Wait: sideWait, Ordered: true},
	{Name: QueueEmail, Bindings: []string{events.OrderPlaced, events.OrderPaid, events.OrderPaymentFailed, events.OrderDelivered, events.OrderCancelled, events.OrderRefunded, events.OrderRiderNear}, Workers: 1, Prefetch: 128, Batch: 64, Wait: sideWait, Ordered: true},
	{Name: QueueAnalytics, Bindings: []string{"order.#"}, Workers: 1, Prefetch: 2000, Batch: 1000, Wait: 100 * time.Millisecond},
}

// batchWait is how long a batch that is not full waits for more: at a few
// hundred orders a second it makes batches of several messages, and so
// several times fewer commits and acks, for 20 ms of latency per hop.
const batchWait = 20 * time.Millisecond

// sideWait is batchWait for the consumers off the path from an order to
// its payment (restaurant feed, e-mail, tracking's copy): their effects can
// wait 50 ms, and the longer window makes their batches, and so their
// commits, fewer again.
const sideWait = 50 * time.Millisecond

// RetryDelays is the ladder a transiently failing message climbs: attempt n
// waits RetryDelays[n-1] in "<queue>.retry.<delay>"; past the last step the
// message goes to the dead-letter queue.
var RetryDelays = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second}

// DeliveryLimit is the quorum queue's guard against crash loops: a message
// delivered this many times without an ack (the consumer died with it each
// time) is dead-lettered by the broker itself.
const DeliveryLimit = 10

// DLQ names the dead-letter queue of a work queue.
func DLQ(queue string) string { return queue + ".dlq" }

// RetryQueue names the queue a message waits in before its next attempt.
func RetryQueue(queue string, delay time.Duration) string {
	return fmt.Sprintf("%s.retry.%s", queue, delay)
}

// Exchange is one exchange of the topology, as declared and as exported in
// the definitions file.
type Exchange struct {
	Name string
	Kind string // amqp.ExchangeTopic, ExchangeDirect, ExchangeFanout
	Args amqp.Table
}

// Queue is one durable queue of the topology.
type Queue struct {
	Name string
	Args amqp.Table
}

// Binding binds Queue to Exchange with Key.
type Binding struct {
	Exchange, Queue, Key string
}

// Spec is the whole durable topology as data: Declare declares it and
// Definitions exports it, so the broker and the definitions file cannot
// drift apart.
type Spec struct {
	Exchanges []Exchange
	Queues    []Queue
	Bindings  []Binding
}

// Topology returns the durable topology: the exchanges, then every work
// queue with its dead-letter queue and retry ladder.
func Topology() Spec {
	s := Spec{
		Exchanges: []Exchange{
			{Name: ExchangeUnroutable, Kind: amqp.ExchangeFanout},
			{Name: ExchangeOrders, Kind: amqp.ExchangeTopic, Args: amqp.Table{"alternate-exchange": ExchangeUnroutable}},
			{Name: ExchangeDLX, Kind: amqp.ExchangeDirect},
			{Name: ExchangeLocations, Kind: amqp.ExchangeTopic},
		},
		Queues:   []Queue{{Name: QueueUnroutable, Args: amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}}},
		Bindings: []Binding{{Exchange: ExchangeUnroutable, Queue: QueueUnroutable}},
	}
	for _, q := range WorkQueues {
		s.add(q)
	}
	return s
}

// add adds one work queue with its bindings, retry queues and dead-letter
// queue.
func (s *Spec) add(q WorkQueue) {
	s.Queues = append(s.Queues, Queue{Name: DLQ(q.Name), Args: amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}})
	s.Bindings = append(s.Bindings, Binding{Exchange: ExchangeDLX, Queue: DLQ(q.Name), Key: q.Name})
	s.Queues = append(s.Queues, Queue{Name: q.Name, Args: amqp.Table{
		amqp.QueueTypeArg: amqp.QueueTypeQuorum,
		// What the broker itself dead-letters (the delivery limit) goes
		// to the same DLQ as what the consumer gives up on.
		"x-dead-letter-exchange":    ExchangeDLX,
		"x-dead-letter-routing-key": q.Name,
		"x-delivery-limit":          DeliveryLimit,
		// at-least-once dead-lettering keeps a message until the DLQ has
		// confirmed it; it requires reject-publish overflow.
		"x-dead-letter-strategy": "at-least-once",
		"x-overflow":             "reject-publish",
	}})
	for _, key := range q.Bindings {
		s.Bindings = append(s.Bindings, Binding{Exchange: ExchangeOrders, Queue: q.Name, Key: key})
	}
	for _, d := range q.retry() {
		s.Queues = append(s.Queues, Queue{Name: RetryQueue(q.Name, d), Args: amqp.Table{
			amqp.QueueTypeArg: amqp.QueueTypeQuorum,
			// Nothing consumes a retry queue: each message waits out the
			// TTL and is dead-lettered back to its work queue through the
			// default exchange.
			"x-message-ttl":             d.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": q.Name,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}})
	}
}

// Declare declares the whole durable topology (Topology). It is idempotent.
func Declare(ch *amqp.Channel) error {
	return Topology().Declare(ch)
}

// Declare declares s: exchanges first, then queues, then bindings.
func (s Spec) Declare(ch *amqp.Channel) error {
	for _, e := range s.Exchanges {
		if err := ch.ExchangeDeclare(e.Name, e.Kind, true, false, false, false, e.Args); err != nil {
			return fmt.Errorf("declare exchange %s: %w", e.Name, err)
		}
	}
	for _, q := range s.Queues {
		if _, err := ch.QueueDeclare(q.Name, true, false, false, false, q.Args); err != nil {
			return fmt.Errorf("declare queue %s: %w", q.Name, err)
		}
	}
	for _, b := range s.Bindings {
		if err := ch.QueueBind(b.Queue, b.Key, b.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind %s to %s with %q: %w", b.Queue, b.Exchange, b.Key, err)
		}
	}
	return nil
}

// DeclareWorkQueue declares one work queue with its bindings, retry queues and
// dead-letter queue (the exchanges must exist).
func DeclareWorkQueue(ch *amqp.Channel, q WorkQueue) error {
	var s Spec
	s.add(q)
	return s.Declare(ch)
}

// RetiredQueues are work queues the topology no longer has. order-status
// and tracking only copied into this database what the outbox already
// holds, and are now projections of it (shared/outbox.Read): no delivery,
// inbox row or transaction per event.
var RetiredQueues = []string{"order-status", "tracking"}

// DeclareTopology opens a channel on conn, declares the topology, retires
// what it no longer has, and closes the channel. Services call it at start;
// it waits for the broker.
func DeclareTopology(ctx context.Context, conn *Conn) error {
	ch, err := conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer conn.Release(ch)
	if err := Declare(ch); err != nil {
		return err
	}
	return retire(ctx, conn, RetiredQueues)
}

// retire deletes each retired work queue with its retry queues, so that a
// broker upgraded from an older release stops filling them (what they held,
// the projections that replace them read from the outbox), and its
// dead-letter queue once that is empty: an operator may still want what a
// DLQ holds (the management UI shows it). Deleting a
// queue that is not there is a no-op.
func retire(ctx context.Context, conn *Conn, queues []string) error {
	for _, q := range queues {
		ch, err := conn.Channel(ctx)
		if err != nil {
			return err
		}
		names := []string{q}
		for _, d := range RetryDelays {
			names = append(names, RetryQueue(q, d))
		}
		for _, name := range names {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				conn.Release(ch)
				return fmt.Errorf("delete retired queue %s: %w", name, err)
			}
		}
		// Quorum queues refuse queue.delete's if-empty flag: look first.
		// Nothing routes to the DLQ once its work queue is gone, so the
		// count cannot grow between the look and the delete. A DLQ that
		// is not there fails the look and closes the channel.
		if info, err := ch.QueueDeclarePassive(DLQ(q), true, false, false, false, nil); err == nil && info.Messages == 0 {
			if _, err := ch.QueueDelete(DLQ(q), false, false, false); err != nil {
				conn.Release(ch)
				return fmt.Errorf("delete retired queue %s: %w", DLQ(q), err)
			}
		}
		conn.Release(ch)
	}
	return nil
}
