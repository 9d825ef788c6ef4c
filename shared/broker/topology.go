package broker

import (
	"context"
	"fmt"
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
	QueuePayment     = "payment"
	QueueRestaurant  = "restaurant-notify"
	QueueEmail       = "email"
	QueueAnalytics   = "analytics"
	QueueOrderStatus = "order-status"
	QueueTracking    = "tracking"
)

// WorkQueue is a durable quorum queue fed by the orders exchange, with its
// retry ladder and dead-letter queue.
type WorkQueue struct {
	Name     string
	Bindings []string // routing keys on ExchangeOrders
	// Retry is the queue's retry ladder; nil means RetryDelays.
	Retry []time.Duration
}

func (q WorkQueue) retry() []time.Duration {
	if q.Retry == nil {
		return RetryDelays
	}
	return q.Retry
}

// WorkQueues is the topology of the order flow: one table, declared by every
// service at start (declaring again is a no-op, so start order never matters).
var WorkQueues = []WorkQueue{
	{Name: QueuePayment, Bindings: []string{events.OrderPlaced}},
	{Name: QueueRestaurant, Bindings: []string{events.OrderPlaced, events.OrderPaid, events.OrderCancelled}},
	{Name: QueueEmail, Bindings: []string{events.OrderPlaced, events.OrderPaid, events.OrderPaymentFailed, events.OrderDelivered}},
	{Name: QueueAnalytics, Bindings: []string{"order.#"}},
	{Name: QueueOrderStatus, Bindings: []string{events.OrderPaid, events.OrderPaymentFailed}},
	{Name: QueueTracking, Bindings: []string{"order.#"}},
}

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

// Declare declares the whole durable topology. It is idempotent.
func Declare(ch *amqp.Channel) error {
	if err := ch.ExchangeDeclare(ExchangeUnroutable, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeUnroutable, err)
	}
	if err := declareQueue(ch, QueueUnroutable, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}); err != nil {
		return err
	}
	if err := ch.QueueBind(QueueUnroutable, "", ExchangeUnroutable, false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", QueueUnroutable, err)
	}
	if err := ch.ExchangeDeclare(ExchangeOrders, amqp.ExchangeTopic, true, false, false, false,
		amqp.Table{"alternate-exchange": ExchangeUnroutable}); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeOrders, err)
	}
	if err := ch.ExchangeDeclare(ExchangeDLX, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeDLX, err)
	}
	if err := ch.ExchangeDeclare(ExchangeLocations, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeLocations, err)
	}
	for _, q := range WorkQueues {
		if err := DeclareWorkQueue(ch, q); err != nil {
			return err
		}
	}
	return nil
}

// DeclareWorkQueue declares one work queue with its bindings, retry queues and
// dead-letter queue.
func DeclareWorkQueue(ch *amqp.Channel, q WorkQueue) error {
	if err := declareQueue(ch, DLQ(q.Name), amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}); err != nil {
		return err
	}
	if err := ch.QueueBind(DLQ(q.Name), q.Name, ExchangeDLX, false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", DLQ(q.Name), err)
	}
	err := declareQueue(ch, q.Name, amqp.Table{
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
	})
	if err != nil {
		return err
	}
	for _, key := range q.Bindings {
		if err := ch.QueueBind(q.Name, key, ExchangeOrders, false, nil); err != nil {
			return fmt.Errorf("bind %s to %s: %w", q.Name, key, err)
		}
	}
	for _, d := range q.retry() {
		err := declareQueue(ch, RetryQueue(q.Name, d), amqp.Table{
			amqp.QueueTypeArg: amqp.QueueTypeQuorum,
			// Nothing consumes a retry queue: each message waits out the
			// TTL and is dead-lettered back to its work queue through the
			// default exchange.
			"x-message-ttl":             d.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": q.Name,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func declareQueue(ch *amqp.Channel, name string, args amqp.Table) error {
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %s: %w", name, err)
	}
	return nil
}

// DeclareTopology opens a channel on conn, declares the topology and closes
// the channel. Services call it at start; it waits for the broker.
func DeclareTopology(ctx context.Context, conn *Conn) error {
	ch, err := conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer conn.Release(ch)
	return Declare(ch)
}
