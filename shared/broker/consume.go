package broker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/trace"
)

// Headers the consumer adds when it retries or dead-letters a message.
const (
	HeaderAttempt    = "x-dabba-attempt"     // failed attempts so far
	HeaderRoutingKey = "x-dabba-routing-key" // original routing key, kept through retries
	HeaderError      = "x-dabba-error"       // last error
	HeaderReason     = "x-dabba-reason"      // why it was dead-lettered
	HeaderQueue      = "x-dabba-queue"       // the work queue it came from
	HeaderDeadAt     = "x-dabba-dead-at"     // when it was dead-lettered
)

// Reasons a consumer dead-letters a message (HeaderReason).
const (
	ReasonPermanent = "permanent-error"
	ReasonExhausted = "retries-exhausted"
)

// Delivery is a message as a handler sees it.
type Delivery struct {
	Queue         string
	MessageID     string
	RoutingKey    string // the original key, even after a trip through a retry queue
	Type          string
	CorrelationID string
	Body          []byte
	Headers       amqp.Table
	Attempt       int  // 1 on the first try
	Redelivered   bool // the broker delivered it before (a consumer died with it)
	// TraceParent is the W3C traceparent the message carries (header
	// "traceparent", set by the outbox relay), "" when it has none valid.
	TraceParent string
	raw         amqp.Delivery
}

// Fields are the log fields that identify a delivery; every log line about
// one carries them, trace_id included when the message has a traceparent.
func (d Delivery) Fields() []zap.Field {
	f := make([]zap.Field, 5, 6)
	f[0], f[1], f[2] = zap.String("queue", d.Queue), zap.String("message_id", d.MessageID), zap.String("order_id", d.CorrelationID)
	f[3], f[4] = zap.String("routing_key", d.RoutingKey), zap.Int("attempt", d.Attempt)
	if d.TraceParent != "" {
		f = append(f, zap.String("trace_id", trace.TraceID(d.TraceParent)))
	}
	return f
}

func newDelivery(queue string, d amqp.Delivery) Delivery {
	key := d.RoutingKey
	if k, ok := d.Headers[HeaderRoutingKey].(string); ok && k != "" {
		key = k
	}
	tp, _ := d.Headers[trace.Header].(string)
	if !trace.Valid(tp) {
		tp = ""
	}
	return Delivery{
		Queue: queue, MessageID: d.MessageId, RoutingKey: key, Type: d.Type, CorrelationID: d.CorrelationId,
		Body: d.Body, Headers: d.Headers, Attempt: headerInt(d.Headers, HeaderAttempt) + 1, Redelivered: d.Redelivered,
		TraceParent: tp, raw: d,
	}
}

func headerInt(h amqp.Table, key string) int {
	switch v := h[key].(type) {
	case int32:
		return int(v)
	case int64:
		return int(v)
	case int:
		return v
	}
	return 0
}

// Handler does the work for one message. nil means done (the message is
// acked), an error made with Permanent (or wrapping events.ErrMalformed)
// dead-letters it at once, any other error retries it after a delay. A
// handler must commit its effect and its inbox record together before it
// returns nil.
type Handler func(ctx context.Context, d Delivery) error

// BatchHandler does the work for a batch of messages at once; nil acks all.
type BatchHandler func(ctx context.Context, batch []Delivery) error

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one no retry can fix: the message is dead-lettered.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked Permanent or is a malformed event.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || errors.Is(err, events.ErrMalformed)
}

// ConsumerConfig configures Consume.
type ConsumerConfig struct {
	Queue string
	// Prefetch bounds the unacked messages the broker pushes to this
	// consumer, and so how much one crash sends back for redelivery.
	Prefetch int
	// Concurrency is how many messages are handled at once (≤ Prefetch).
	Concurrency int
	// HandlerTimeout bounds one handler call (default 30 s).
	HandlerTimeout time.Duration
	// Retry is the retry ladder; it must match the queue's declaration
	// (WorkQueue.Retry). nil means RetryDelays.
	Retry []time.Duration
	// MaxBatch and MaxWait make ConsumeBatch hand over up to MaxBatch
	// messages, or what arrived within MaxWait, whichever comes first.
	MaxBatch int
	MaxWait  time.Duration
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	if c.Concurrency < 1 {
		c.Concurrency = 1
	}
	if c.Prefetch < c.Concurrency {
		c.Prefetch = c.Concurrency
	}
	if c.MaxBatch > c.Prefetch {
		c.Prefetch = c.MaxBatch
	}
	if c.HandlerTimeout <= 0 {
		c.HandlerTimeout = 30 * time.Second
	}
	if c.Retry == nil {
		c.Retry = RetryDelays
	}
	if c.MaxWait <= 0 {
		c.MaxWait = time.Second
	}
	return c
}

// consumer settles deliveries for one queue.
type consumer struct {
	cfg     ConsumerConfig
	pub     *Publisher
	log     *zap.Logger
	metrics *metrics.Queue
}

// Consume receives messages pushed by the broker from cfg.Queue and hands
// each to h, until ctx is done. It survives broker restarts by starting a
// new session on a new channel. On cancellation, messages in hand are
// finished and acked; the rest go back to the queue when the channel closes.
func Consume(ctx context.Context, conn *Conn, cfg ConsumerConfig, h Handler, log *zap.Logger) error {
	cfg = cfg.withDefaults()
	c := &consumer{cfg: cfg, pub: NewPublisher(conn, log), log: log, metrics: conn.metrics.Queue(cfg.Queue)}
	defer c.pub.Close()
	return c.run(ctx, conn, func(ctx context.Context, ch *amqp.Channel, deliveries <-chan amqp.Delivery, lost <-chan struct{}) error {
		return c.session(ctx, deliveries, lost, h)
	})
}

// ConsumeBatch is Consume for handlers that work best on many messages at
// once (one INSERT for a thousand rows). A batch that fails is taken apart and
// each message handled alone, so one poison message cannot hold up the rest.
func ConsumeBatch(ctx context.Context, conn *Conn, cfg ConsumerConfig, h BatchHandler, log *zap.Logger) error {
	if cfg.MaxBatch < 1 {
		cfg.MaxBatch = 1
	}
	cfg = cfg.withDefaults()
	c := &consumer{cfg: cfg, pub: NewPublisher(conn, log), log: log, metrics: conn.metrics.Queue(cfg.Queue)}
	defer c.pub.Close()
	return c.run(ctx, conn, func(ctx context.Context, ch *amqp.Channel, deliveries <-chan amqp.Delivery, lost <-chan struct{}) error {
		return c.batchSession(ctx, deliveries, lost, h)
	})
}

type sessionFunc func(ctx context.Context, ch *amqp.Channel, deliveries <-chan amqp.Delivery, lost <-chan struct{}) error

func (c *consumer) run(ctx context.Context, conn *Conn, session sessionFunc) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := c.openSession(ctx, conn, session)
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("consumer session ended, starting another", zap.String("queue", c.cfg.Queue), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (c *consumer) openSession(ctx context.Context, conn *Conn, session sessionFunc) error {
	ch, err := conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer conn.Release(ch)
	lost := ChannelLost(ch)
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(c.cfg.Queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.cfg.Queue, err)
	}
	c.log.Info("consuming", zap.String("queue", c.cfg.Queue), zap.Int("prefetch", c.cfg.Prefetch), zap.Int("concurrency", c.cfg.Concurrency))
	return session(ctx, ch, deliveries, lost)
}

func (c *consumer) session(ctx context.Context, deliveries <-chan amqp.Delivery, lost <-chan struct{}, h Handler) error {
	var wg sync.WaitGroup
	defer wg.Wait() // in-flight handlers finish before the channel closes
	slots := make(chan struct{}, c.cfg.Concurrency)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errors.New("channel lost")
		case raw, ok := <-deliveries:
			if !ok {
				return errors.New("deliveries closed")
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				// Not started: it goes back to the queue when the
				// channel closes.
				return nil
			case <-lost:
				return errors.New("channel lost")
			}
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				d := newDelivery(c.cfg.Queue, raw)
				c.metrics.Consumed(1)
				start := time.Now()
				err := c.call(ctx, d, h)
				took := time.Since(start)
				c.metrics.Handled(took)
				c.settle(ctx, d, err, took)
			}()
		}
	}
}

func (c *consumer) batchSession(ctx context.Context, deliveries <-chan amqp.Delivery, lost <-chan struct{}, h BatchHandler) error {
	batch := make([]Delivery, 0, c.cfg.MaxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		if len(batch) > 0 {
			c.settleBatch(ctx, batch, h)
			batch = batch[:0]
		}
		timer.Stop()
	}
	defer flush()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errors.New("channel lost")
		case <-timer.C:
			flush()
		case raw, ok := <-deliveries:
			if !ok {
				return errors.New("deliveries closed")
			}
			if len(batch) == 0 {
				timer.Reset(c.cfg.MaxWait)
			}
			batch = append(batch, newDelivery(c.cfg.Queue, raw))
			if len(batch) >= c.cfg.MaxBatch {
				flush()
			}
		}
	}
}

func (c *consumer) settleBatch(ctx context.Context, batch []Delivery, h BatchHandler) {
	c.metrics.Consumed(len(batch))
	start := time.Now()
	err := c.callBatch(ctx, batch, h)
	took := time.Since(start)
	c.metrics.Handled(took)
	if err == nil {
		last := batch[len(batch)-1].raw
		if aerr := last.Ack(true); aerr != nil {
			c.log.Warn("ack batch failed; the broker will redeliver it", zap.String("queue", c.cfg.Queue), zap.Error(aerr), zap.Int("size", len(batch)))
			return
		}
		c.metrics.Acked(len(batch))
		if ce := c.log.Check(zap.DebugLevel, "message handled"); ce != nil {
			for _, d := range batch {
				ce.Write(append(d.Fields(), zap.Duration("took", took), zap.Int("batch", len(batch)))...)
				ce = c.log.Check(zap.DebugLevel, "message handled")
			}
		}
		return
	}
	c.log.Warn("batch failed, handling its messages one by one", zap.String("queue", c.cfg.Queue), zap.Error(err), zap.Int("size", len(batch)))
	for _, d := range batch {
		start := time.Now()
		err := c.callBatch(ctx, []Delivery{d}, h)
		took := time.Since(start)
		c.metrics.Handled(took)
		c.settle(ctx, d, err, took)
	}
}

// call runs h with a context that outlives the consumer's own, so that work
// in hand when the service is told to stop is finished, not abandoned.
// A panic becomes an error.
//
// The context carries the message's traceparent, so that what the handler
// publishes in turn (through the outbox) continues the same trace.
func (c *consumer) call(ctx context.Context, d Delivery, h Handler) (err error) {
	ctx = context.WithoutCancel(ctx)
	if d.TraceParent != "" {
		ctx = trace.NewContext(ctx, d.TraceParent)
	}
	hctx, cancel := context.WithTimeout(ctx, c.cfg.HandlerTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v\n%s", r, debug.Stack())
		}
	}()
	return h(hctx, d)
}

func (c *consumer) callBatch(ctx context.Context, batch []Delivery, h BatchHandler) (err error) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.HandlerTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v\n%s", r, debug.Stack())
		}
	}()
	return h(hctx, batch)
}

// settle acks, retries or dead-letters one delivery after its handler ran.
// A retry or dead-letter copy is published with a confirm before the
// original is acked; if that publish fails the original is requeued, so a
// message is never dropped on the way.
//
// Success is logged at debug level only: one line per message is too many
// for production, and checking the level first keeps it free when off.
func (c *consumer) settle(ctx context.Context, d Delivery, err error, took time.Duration) {
	if err == nil {
		if aerr := d.raw.Ack(false); aerr != nil {
			c.log.Warn("ack failed; the broker will redeliver", append(d.Fields(), zap.Error(aerr))...)
			return
		}
		c.metrics.Acked(1)
		if ce := c.log.Check(zap.DebugLevel, "message handled"); ce != nil {
			ce.Write(append(d.Fields(), zap.Duration("took", took))...)
		}
		return
	}
	log := c.log.With(d.Fields()...)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var perr error
	switch {
	case IsPermanent(err):
		log.Error("dead-lettering: permanent error", zap.Error(err))
		perr = c.deadLetter(pctx, d, ReasonPermanent, err)
		if perr == nil {
			c.metrics.DeadLettered(metrics.ReasonPermanent)
		}
	case d.Attempt > len(c.cfg.Retry):
		log.Error("dead-lettering: retries exhausted", zap.Error(err))
		perr = c.deadLetter(pctx, d, ReasonExhausted, err)
		if perr == nil {
			c.metrics.DeadLettered(metrics.ReasonExhausted)
		}
	default:
		delay := c.cfg.Retry[d.Attempt-1]
		log.Warn("retrying later", zap.Error(err), zap.Duration("delay", delay))
		perr = c.pub.Publish(pctx, c.copyOf(d, "", RetryQueue(c.cfg.Queue, delay), err, ""))
		if perr == nil {
			c.metrics.Retried()
		}
	}
	if perr != nil {
		log.Error("could not move the message on; requeueing it", zap.Error(perr))
		c.metrics.Requeued()
		if nerr := d.raw.Nack(false, true); nerr != nil {
			log.Warn("nack failed; the broker will redeliver", zap.Error(nerr))
		}
		return
	}
	if aerr := d.raw.Ack(false); aerr != nil {
		// The copy is already safe; the original comes back and the
		// handler's inbox makes the second delivery harmless.
		log.Warn("ack failed; the broker will redeliver", zap.Error(aerr))
	}
}

func (c *consumer) deadLetter(ctx context.Context, d Delivery, reason string, err error) error {
	return c.pub.Publish(ctx, c.copyOf(d, ExchangeDLX, c.cfg.Queue, err, reason))
}

// copyOf builds the retry or dead-letter copy of d, keeping its identity
// (message id, type, correlation id, original routing key) so that the
// handler's inbox still recognises it.
func (c *consumer) copyOf(d Delivery, exchange, key string, err error, reason string) Message {
	h := amqp.Table{}
	for k, v := range d.raw.Headers {
		h[k] = v
	}
	h[HeaderAttempt] = int32(d.Attempt)
	h[HeaderRoutingKey] = d.RoutingKey
	h[HeaderQueue] = c.cfg.Queue
	msg := err.Error()
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	h[HeaderError] = msg
	if reason != "" {
		h[HeaderReason] = reason
		h[HeaderDeadAt] = time.Now().UTC().Format(time.RFC3339Nano)
	}
	return Message{
		Exchange: exchange, RoutingKey: key, MessageID: d.MessageID, Type: d.Type, CorrelationID: d.CorrelationID,
		ContentType: d.raw.ContentType, Body: d.Body, Headers: h, Timestamp: d.raw.Timestamp,
	}
}
