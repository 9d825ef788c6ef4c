package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
)

// The relay queue's bounds. A fix is worthless once a newer one exists, so
// when the relay falls behind the broker drops the oldest messages first,
// and a message older than the TTL is not worth showing at all.
const (
	relayMaxLength = 10_000
	relayTTL       = 5 * time.Second
	relayPrefetch  = 1000
	// relayAckEvery bounds how long handled messages stay unacked: acks go
	// out in batches (multiple=true), not one frame per fix.
	relayAckEvery = 100 * time.Millisecond
)

// Sink is what the relay feeds: the hub.
type Sink interface {
	Fix(f Fix)
}

// Relay feeds this instance's hub riders' fixes from RabbitMQ. It owns one
// exclusive, auto-delete classic queue on the locations exchange, bound to
// "rider.<id>" only while some customer connected here watches that rider,
// so N instances do not each receive the whole city. It announces those
// riders to the other instances ("watch.<instance>", the moment it has
// bound one, and all of them every announceEvery), whose ingests then
// publish only what some instance watches, and hears their announcements
// on the same queue (Interest). After a broker reset it declares a new
// queue and binds every key again; the customers' sockets never notice
// beyond a gap in fixes.
type Relay struct {
	conn     *broker.Conn
	interest *Interest
	announce *broker.Publisher
	log      *zap.Logger

	mu      sync.Mutex
	want    map[string]struct{} // keys some customer here needs
	dirty   map[string]struct{} // keys whose binding may have to change
	changed chan struct{}       // capacity 1: dirty is not empty
	hello   chan struct{}       // capacity 1: another instance asked for our riders

	// Sessions counts the queue sessions started (1 + broker resets).
	Sessions  atomic.Int64
	Malformed atomic.Int64
	bound     atomic.Int64
	warn      rate.Sometimes
}

// NewRelay returns a relay on conn that tells interest what the other
// instances announce.
func NewRelay(conn *broker.Conn, interest *Interest, log *zap.Logger) *Relay {
	log = log.With(zap.String("component", "relay"))
	return &Relay{conn: conn, interest: interest, log: log,
		want: map[string]struct{}{}, dirty: map[string]struct{}{}, changed: make(chan struct{}, 1), hello: make(chan struct{}, 1),
		warn: rate.Sometimes{Interval: 10 * time.Second}}
}

// watchKey is the routing key of an instance's announcements; watchKeys
// binds them all.
func watchKey(instance string) string { return "watch." + instance }

const watchKeys = "watch.*"

// Bind asks for key's messages. It does not block: the binding is made by
// the session's binder goroutine.
func (r *Relay) Bind(key string) { r.mark(key, true) }

// Unbind ends the need for key's messages.
func (r *Relay) Unbind(key string) { r.mark(key, false) }

func (r *Relay) mark(key string, want bool) {
	r.mu.Lock()
	if want {
		r.want[key] = struct{}{}
	} else {
		delete(r.want, key)
	}
	r.dirty[key] = struct{}{}
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Bound returns how many keys the current queue is bound to.
func (r *Relay) Bound() int64 { return r.bound.Load() }

// Run relays into sink until ctx is done, starting a new session after each
// loss of the channel (a broker restart, a connection reset).
func (r *Relay) Run(ctx context.Context, sink Sink) error {
	r.announce = broker.NewTransientPublisher(r.conn, r.log)
	defer r.announce.Close()
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		start := time.Now()
		err := r.session(ctx, sink)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			wait = 100 * time.Millisecond
		}
		r.log.Warn("relay session ended, starting another", zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (r *Relay) session(ctx context.Context, sink Sink) error {
	ch, err := r.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer r.conn.Release(ch)
	lost := broker.ChannelLost(ch)
	q, err := ch.QueueDeclare("", false, true, true, false, amqp.Table{
		"x-queue-type":  "classic",
		"x-max-length":  relayMaxLength,
		"x-overflow":    "drop-head",
		"x-message-ttl": relayTTL.Milliseconds(),
	})
	if err != nil {
		return fmt.Errorf("declare relay queue: %w", err)
	}
	if err := ch.Qos(relayPrefetch, 0, false); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	if err := ch.QueueBind(q.Name, watchKeys, broker.ExchangeLocations, false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", watchKeys, err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume relay queue: %w", err)
	}
	r.interest.Up()
	defer r.interest.Down()
	r.Sessions.Add(1)
	r.log.Info("relaying", zap.String("queue", q.Name))

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bindErr := make(chan error, 1)
	go func() { bindErr <- r.binder(sctx, ch, q.Name) }()

	tick := time.NewTicker(relayAckEvery)
	defer tick.Stop()
	var unacked int
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errors.New("channel lost")
		case err := <-bindErr:
			return err
		case <-tick.C:
			if unacked > 0 {
				if err := ch.Ack(last, true); err != nil {
					return fmt.Errorf("ack: %w", err)
				}
				unacked = 0
			}
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("deliveries closed")
			}
			r.handle(d, sink)
			last = d.DeliveryTag
			if unacked++; unacked >= relayPrefetch/2 {
				if err := ch.Ack(last, true); err != nil {
					return fmt.Errorf("ack: %w", err)
				}
				unacked = 0
			}
		}
	}
}

// binder keeps the queue's bindings equal to the keys wanted, and
// announces the riders bound. It is the only goroutine making calls that
// wait for an answer on ch (a channel answers one call at a time).
func (r *Relay) binder(ctx context.Context, ch *amqp.Channel, queue string) error {
	r.mu.Lock()
	for k := range r.want {
		r.dirty[k] = struct{}{}
	}
	r.mu.Unlock()
	bound := map[string]struct{}{}
	defer r.bound.Store(0)
	tick := time.NewTicker(announceEvery)
	defer tick.Stop()
	full, hello := true, true // a new queue: say hello with everything bound
	for {
		r.mu.Lock()
		dirty := r.dirty
		r.dirty = map[string]struct{}{}
		r.mu.Unlock()
		var added []string
		for k := range dirty {
			r.mu.Lock()
			_, want := r.want[k]
			r.mu.Unlock()
			_, has := bound[k]
			switch {
			case want && !has:
				if err := ch.QueueBind(queue, k, broker.ExchangeLocations, false, nil); err != nil {
					return fmt.Errorf("bind %s: %w", k, err)
				}
				bound[k] = struct{}{}
				added = append(added, strings.TrimPrefix(k, "rider."))
			case !want && has:
				if err := ch.QueueUnbind(queue, k, broker.ExchangeLocations, nil); err != nil {
					return fmt.Errorf("unbind %s: %w", k, err)
				}
				delete(bound, k)
			}
		}
		r.bound.Store(int64(len(bound)))
		// Announced once bound, so what the others publish for us from
		// then on reaches the queue.
		switch {
		case full:
			riders := make([]string, 0, len(bound))
			for k := range bound {
				riders = append(riders, strings.TrimPrefix(k, "rider."))
			}
			r.say(ctx, announcement{Full: true, Hello: hello, Riders: riders})
		case len(added) > 0:
			r.say(ctx, announcement{Riders: added})
		}
		full, hello = false, false
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
		case <-tick.C:
			full = true
		case <-r.hello:
			full = true
		}
	}
}

// say publishes an announcement of this instance's. One that is lost is
// repeated by the next full one, within announceEvery.
func (r *Relay) say(ctx context.Context, a announcement) {
	a.Instance = r.interest.self
	body, err := json.Marshal(a)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	acked, err := r.announce.PublishBatch(pctx, []broker.Message{{Exchange: broker.ExchangeLocations, RoutingKey: watchKey(a.Instance),
		Body: body, Transient: true}})
	if err != nil || !acked[0] {
		r.warn.Do(func() { r.log.Warn("announcement not published", zap.Error(err)) })
	}
}

// handle passes one message to the sink; a message that does not match its
// routing key is dropped (nothing else publishes there legitimately).
func (r *Relay) handle(d amqp.Delivery, sink Sink) {
	switch {
	case strings.HasPrefix(d.RoutingKey, "rider."):
		var f Fix
		if err := json.Unmarshal(d.Body, &f); err != nil || riderKey(f.RiderID) != d.RoutingKey || f.Seq < 1 {
			r.malformed(d, err)
			return
		}
		sink.Fix(f)
	case strings.HasPrefix(d.RoutingKey, "watch."):
		var a announcement
		if err := json.Unmarshal(d.Body, &a); err != nil || watchKey(a.Instance) != d.RoutingKey {
			r.malformed(d, err)
			return
		}
		r.interest.apply(a, time.Now())
		if a.Hello && a.Instance != r.interest.self {
			select {
			case r.hello <- struct{}{}:
			default:
			}
		}
	default:
		r.malformed(d, nil)
	}
}

func (r *Relay) malformed(d amqp.Delivery, err error) {
	r.Malformed.Add(1)
	r.warn.Do(func() {
		r.log.Warn("malformed live message dropped", zap.String("routing_key", d.RoutingKey), zap.Error(err))
	})
}
