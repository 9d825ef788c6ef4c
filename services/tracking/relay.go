package main

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
)

// Relay feeds this instance's hub from RabbitMQ. It owns one exclusive,
// auto-delete queue, bound to "locations" with "rider.<id>" only for the
// riders some customer here watches, and to "orders" for status changes.
// The queue is bounded and drops its oldest fixes first: a fix is worthless
// once a newer one exists. After a broker reset it declares the queue and
// every binding again; connected customers keep their sockets.
type Relay struct {
	conn *broker.Conn
	hub  *Hub
	log  *zap.Logger

	mu     sync.Mutex
	ch     *amqp.Channel // current session's channel, nil between sessions
	queue  string
	riders map[string]bool // bindings wanted
}

// NewRelay returns a relay feeding hub, which must be set with SetHub
// before Run (the two refer to each other).
func NewRelay(conn *broker.Conn, log *zap.Logger) *Relay {
	return &Relay{conn: conn, log: log.With(zap.String("component", "relay")), riders: map[string]bool{}}
}

// SetHub sets the hub the relay feeds.
func (r *Relay) SetHub(h *Hub) { r.hub = h }

// Bind subscribes this instance to a rider's fixes.
func (r *Relay) Bind(rider string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.riders[rider] = true
	if r.ch != nil {
		if err := r.ch.QueueBind(r.queue, "rider."+rider, broker.ExchangeLocations, false, nil); err != nil {
			r.log.Warn("bind rider; the next session binds it", zap.String("rider_id", rider), zap.Error(err))
		}
	}
}

// Unbind ends this instance's subscription to a rider's fixes.
func (r *Relay) Unbind(rider string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.riders, rider)
	if r.ch != nil {
		if err := r.ch.QueueUnbind(r.queue, "rider."+rider, broker.ExchangeLocations, nil); err != nil {
			r.log.Warn("unbind rider", zap.String("rider_id", rider), zap.Error(err))
		}
	}
}

// Run relays until ctx is done, starting a new session after each reset.
func (r *Relay) Run(ctx context.Context) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("relay session ended, starting another", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (r *Relay) session(ctx context.Context) error {
	ch, err := r.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer func() {
		r.mu.Lock()
		r.ch = nil
		r.mu.Unlock()
		r.conn.Release(ch)
	}()
	lost := broker.ChannelLost(ch)
	q, err := ch.QueueDeclare("", false, true, true, false, amqp.Table{
		"x-max-length":  10_000,
		"x-overflow":    "drop-head",
		"x-message-ttl": 10_000, // a fix older than 10 s is not worth showing
	})
	if err != nil {
		return err
	}
	if err := ch.QueueBind(q.Name, "order.#", broker.ExchangeOrders, false, nil); err != nil {
		return err
	}
	r.mu.Lock()
	for rider := range r.riders {
		if err := ch.QueueBind(q.Name, "rider."+rider, broker.ExchangeLocations, false, nil); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	r.ch, r.queue = ch, q.Name
	r.mu.Unlock()
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return err
	}
	r.log.Info("relaying", zap.String("queue", q.Name))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errors.New("channel lost")
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("deliveries closed")
			}
			r.handle(d)
		}
	}
}

func (r *Relay) handle(d amqp.Delivery) {
	if d.Exchange == broker.ExchangeLocations {
		var f Fix
		if err := json.Unmarshal(d.Body, &f); err != nil || f.RiderID == "" || "rider."+f.RiderID != d.RoutingKey {
			r.log.Warn("malformed fix dropped", zap.String("routing_key", d.RoutingKey), zap.Error(err))
			return
		}
		r.hub.Fix(f)
		return
	}
	e, err := events.Decode(d.Body)
	if err != nil {
		r.log.Warn("malformed order event dropped", zap.Error(err))
		return
	}
	if e.Type == events.OrderRiderAssigned {
		var a events.RiderAssigned
		if err := events.DecodeData(e, &a); err == nil && validRiderID(a.RiderID) {
			r.hub.Assign(e.OrderID, a.RiderID)
		}
		return
	}
	if status, ok := statusOf(e.Type); ok {
		r.hub.Status(statusMsg{Type: "status", OrderID: e.OrderID, Status: status, At: e.OccurredAt})
	}
}

// statusOf maps an order event's routing key to the status it announces.
func statusOf(routingKey string) (string, bool) {
	for status, key := range events.StatusEvent {
		if key == routingKey {
			return status, true
		}
	}
	return "", false
}
