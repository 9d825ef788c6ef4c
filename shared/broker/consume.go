package broker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
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

// BatchHandler does the work for a batch of messages at once. nil means
// every message's effect is committed: the batch is acked with one
// multiple ack. Failures (some messages failed, the rest are committed)
// settles each failed message alone and acks the rest. Any other error
// means nothing was committed: a batch of one is settled with that error,
// a larger batch is taken apart and each message handed over alone, so one
// poison message never holds back or dead-letters its neighbours.
//
// An error made with Permanent (or wrapping events.ErrMalformed)
// dead-letters a message at once; any other error retries it after a
// delay. A handler must commit its effects and their inbox records
// together before it returns.
type BatchHandler func(ctx context.Context, batch []Delivery) error

// Failures is what a BatchHandler returns when some messages of a batch
// failed while the effects of the others were committed: batch index to
// that message's error.
type Failures map[int]error

func (f Failures) Error() string {
	for i, err := range f {
		return fmt.Sprintf("%d of the batch failed, e.g. #%d: %v", len(f), i, err)
	}
	return "no failures"
}

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

// ConsumerConfig configures Consume. WorkQueue.Config gives a work queue's.
type ConsumerConfig struct {
	Queue string
	// Workers is how many batches are in hand at once. Each worker has a
	// channel (and so a prefetch window) of its own: a multiple ack
	// settles everything up to a tag on its channel, which is only safe
	// when one batch at a time is in hand on that channel.
	Workers int
	// Prefetch bounds the unacked messages the broker pushes to each
	// worker, and so how much one crash sends back for redelivery. It is
	// at least Batch; more lets the next batch arrive while one is in hand.
	Prefetch int
	// Batch is the most messages handed over at once. A batch is what has
	// arrived when a worker is free; with Wait set, a batch that is not full
	// waits that long after its first message for more.
	Batch int
	Wait  time.Duration
	// HandlerTimeout bounds one handler call (default 30 s).
	HandlerTimeout time.Duration
	// Retry is the retry ladder; it must match the queue's declaration
	// (WorkQueue.Retry). nil means RetryDelays.
	Retry []time.Duration
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	c.Workers = max(c.Workers, 1)
	c.Batch = max(c.Batch, 1)
	c.Prefetch = max(c.Prefetch, c.Batch)
	if c.HandlerTimeout <= 0 {
		c.HandlerTimeout = 30 * time.Second
	}
	if c.Retry == nil {
		c.Retry = RetryDelays
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
// them to h in batches, until ctx is done. Each worker survives broker
// restarts by starting a new session on a new channel. On cancellation, the
// batches in hand are finished and acked; the rest go back to the queue
// when the channels close. Retry and dead-letter copies are published on
// conn's publishing connection.
func Consume(ctx context.Context, conn *Conn, cfg ConsumerConfig, h BatchHandler, log *zap.Logger) error {
	cfg = cfg.withDefaults()
	c := &consumer{cfg: cfg, pub: NewPublisher(conn, log), log: log, metrics: conn.metrics.Queue(cfg.Queue)}
	defer c.pub.Close()
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() { c.run(ctx, conn, h) })
	}
	wg.Wait()
	return nil
}

func (c *consumer) run(ctx context.Context, conn *Conn, h BatchHandler) {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := c.openSession(ctx, conn, h)
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("consumer session ended, starting another", zap.String("queue", c.cfg.Queue), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (c *consumer) openSession(ctx context.Context, conn *Conn, h BatchHandler) error {
	ch, err := conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer conn.Release(ch)
	lost := ChannelLost(ch)
	// The service declares the topology too, in the background; declaring
	// it here as well (a no-op when it exists) means a consumer never
	// starts before its queue does.
	if err := Declare(ch); err != nil {
		return err
	}
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(c.cfg.Queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.cfg.Queue, err)
	}
	c.log.Debug("consuming", zap.String("queue", c.cfg.Queue), zap.Int("prefetch", c.cfg.Prefetch), zap.Int("batch", c.cfg.Batch))
	return c.session(ctx, deliveries, lost, h)
}

// session gathers deliveries into batches and settles one batch at a time.
// A batch is what has arrived: after each delivery the session takes, without
// waiting, whatever else the library already holds for this channel, up to
// Batch. Under load the next deliveries pile up while a batch is in hand, so
// batches grow with the load and cost no latency when it is light. With Wait
// set, a batch that is not full waits that long for more before it goes.
func (c *consumer) session(ctx context.Context, deliveries <-chan amqp.Delivery, lost <-chan struct{}, h BatchHandler) error {
	batch := make([]Delivery, 0, c.cfg.Batch)
	defer func() {
		if len(batch) > 0 { // taken but not handled: finish them
			c.settleBatch(ctx, batch, h)
		}
	}()
	var timer *time.Timer
	var expired <-chan time.Time
	for {
		if ctx.Err() != nil {
			return nil // before taking more: what was not taken goes back to the queue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errors.New("channel lost")
		case <-expired:
		case raw, ok := <-deliveries:
			if !ok {
				return errors.New("deliveries closed")
			}
			batch = append(batch, newDelivery(c.cfg.Queue, raw))
			batch = c.takeBuffered(deliveries, batch)
			if len(batch) < c.cfg.Batch && c.cfg.Wait > 0 {
				if expired == nil {
					timer = time.NewTimer(c.cfg.Wait)
					expired = timer.C
				}
				continue
			}
		}
		if timer != nil {
			timer.Stop()
			timer, expired = nil, nil
		}
		if len(batch) > 0 {
			c.settleBatch(ctx, batch, h)
			batch = batch[:0]
		}
	}
}

// takeBuffered appends to batch, up to Batch, the deliveries the library
// holds already. It yields a few times first so that deliveries still being
// parsed off the socket make it into this batch.
func (c *consumer) takeBuffered(deliveries <-chan amqp.Delivery, batch []Delivery) []Delivery {
	for misses := 0; len(batch) < c.cfg.Batch && misses < 3; {
		select {
		case raw, ok := <-deliveries:
			if !ok {
				return batch
			}
			batch = append(batch, newDelivery(c.cfg.Queue, raw))
			misses = 0
		default:
			misses++
			runtime.Gosched()
		}
	}
	return batch
}

func (c *consumer) settleBatch(ctx context.Context, batch []Delivery, h BatchHandler) {
	c.metrics.Consumed(len(batch))
	start := time.Now()
	err := c.call(ctx, batch, h)
	took := time.Since(start)
	c.metrics.Handled(took)
	var failures Failures
	switch {
	case err == nil:
		c.ack(batch, took)
	case errors.As(err, &failures):
		ok := make([]Delivery, 0, len(batch))
		for i, d := range batch {
			if ferr, failed := failures[i]; failed {
				c.settle(ctx, d, ferr, took)
			} else {
				ok = append(ok, d)
			}
		}
		c.ack(ok, took)
	case len(batch) == 1:
		c.settle(ctx, batch[0], err, took)
	default:
		c.log.Warn("batch failed, handling its messages one by one", zap.String("queue", c.cfg.Queue), zap.Error(err), zap.Int("size", len(batch)))
		for _, d := range batch {
			c.settleBatch(ctx, []Delivery{d}, h)
		}
	}
}

// ack acks the deliveries of a batch whose effects are committed, with one
// multiple ack up to the last of them: every delivery before it on this
// channel is decided, because a channel has one batch in hand at a time
// and its failed messages were settled first.
func (c *consumer) ack(done []Delivery, took time.Duration) {
	if len(done) == 0 {
		return
	}
	last := done[len(done)-1].raw
	if err := last.Ack(len(done) > 1); err != nil {
		c.log.Warn("ack failed; the broker will redeliver", zap.String("queue", c.cfg.Queue), zap.Error(err), zap.Int("size", len(done)))
		return
	}
	c.metrics.Acked(len(done))
	if ce := c.log.Check(zap.DebugLevel, "message handled"); ce != nil {
		for _, d := range done {
			ce.Write(append(d.Fields(), zap.Duration("took", took), zap.Int("batch", len(done)))...)
			ce = c.log.Check(zap.DebugLevel, "message handled")
		}
	}
}

// call runs h with a context that outlives the consumer's own, so that work
// in hand when the service is told to stop is finished, not abandoned.
// A panic becomes an error. For a batch of one, the context carries the
// message's traceparent, so what the handler publishes in turn (through the
// outbox) continues the same trace; a handler of larger batches takes each
// message's from its Delivery.
func (c *consumer) call(ctx context.Context, batch []Delivery, h BatchHandler) (err error) {
	ctx = context.WithoutCancel(ctx)
	if len(batch) == 1 && batch[0].TraceParent != "" {
		ctx = trace.NewContext(ctx, batch[0].TraceParent)
	}
	hctx, cancel := context.WithTimeout(ctx, c.cfg.HandlerTimeout)
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
		c.ack([]Delivery{d}, took)
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
