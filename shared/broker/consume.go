package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
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
	// A replay (shared/dlq) adds these to the copy it sends back, so an
	// operator, and a consumer, can tell a replayed message from a fresh
	// one.
	HeaderReplays    = "x-dabba-replays"     // how often the message was replayed
	HeaderReplayedAt = "x-dabba-replayed-at" // when it was last replayed
)

// Reasons a consumer dead-letters a message (HeaderReason).
const (
	ReasonPermanent = "permanent-error"
	ReasonExhausted = "retries-exhausted"
	// ReasonWaitedTooLong: an event of an ordered consumer waited longer
	// than its hold limit for an earlier event of its order
	// (shared/consumer).
	ReasonWaitedTooLong = "waited-too-long"
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

// headerInt reads a count we wrote into a header; anything else there
// (missing, negative, absurdly large, another type) counts as 0, so that a
// malformed header can never index outside the retry ladder.
func headerInt(h amqp.Table, key string) int {
	var n int64
	switch v := h[key].(type) {
	case int32:
		n = int64(v)
	case int64:
		n = v
	case int:
		n = int64(v)
	}
	if n < 0 || n > math.MaxInt16 {
		return 0
	}
	return int(n)
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

type unavailableError struct {
	dependency string
	err        error
}

func (e unavailableError) Error() string { return e.dependency + " unavailable: " + e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// Unavailable marks err as the failure of a dependency that is down (the
// database, the payment provider, the mail server), not of the message: an
// outage is no reason to give up on it. The consumer keeps the message,
// spends none of its retries, takes no new work, and tries again, one
// message first, with a growing pause, until the dependency answers.
func Unavailable(dependency string, err error) error {
	if err == nil {
		return nil
	}
	return unavailableError{dependency, err}
}

// UnavailableDependency reports which dependency err says is down.
func UnavailableDependency(err error) (string, bool) {
	var u unavailableError
	if errors.As(err, &u) {
		return u.dependency, true
	}
	return "", false
}

// outageOf reports the dependency a batch's outcome says is down: the
// whole batch's error, or every failure of a batch (some of whose
// messages may have succeeded) alike.
func outageOf(err error) (string, bool) {
	var failures Failures
	if !errors.As(err, &failures) {
		return UnavailableDependency(err)
	}
	for _, ferr := range failures {
		if dep, ok := UnavailableDependency(ferr); ok {
			return dep, true
		}
	}
	return "", false
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
	conn    *Conn
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
	c := &consumer{cfg: cfg, conn: conn, pub: NewPublisher(conn, log), log: log, metrics: conn.metrics.Queue(cfg.Queue)}
	defer c.pub.Close()
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() { c.run(ctx, conn, h) })
	}
	wg.Wait()
	return nil
}

func (c *consumer) run(ctx context.Context, conn *Conn, h BatchHandler) {
	wait := firstSessionWait
	for {
		start := time.Now()
		err := c.openSession(ctx, conn, h)
		if ctx.Err() != nil {
			return
		}
		wait = nextSessionWait(wait, time.Since(start))
		c.log.Warn("consumer session ended, starting another", zap.String("queue", c.cfg.Queue), zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// firstSessionWait is the pause before a new session after a healthy one.
const firstSessionWait = 100 * time.Millisecond

// nextSessionWait is the pause before the next session after one that
// lasted this long: doubling, up to 5 s, while sessions keep failing at
// once; back to the first after one that ran for a minute, whose end is a
// new failure rather than the same one again.
func nextSessionWait(wait, lasted time.Duration) time.Duration {
	if lasted > time.Minute {
		return firstSessionWait
	}
	return min(2*wait, 5*time.Second)
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
	s := settling{consumer: c, lost: lost, h: h}
	batch := make([]Delivery, 0, c.cfg.Batch)
	defer func() {
		if len(batch) > 0 { // taken but not handled: finish them
			s.batch(ctx, batch)
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
			s.batch(ctx, batch)
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

// settling is a session's settling of its batches: the channel they came on
// (lost when it is gone) and their handler.
type settling struct {
	*consumer
	lost <-chan struct{}
	h    BatchHandler
}

// batch hands batch to the handler and settles each message by the
// outcome: acked when its effect is committed, retried or dead-lettered
// when it failed, kept when a dependency it needs is down (hold).
func (s settling) batch(ctx context.Context, batch []Delivery) {
	s.metrics.Consumed(len(batch))
	start := time.Now()
	err := s.call(ctx, batch, s.h)
	took := time.Since(start)
	s.metrics.Handled(took)
	s.settleOutcome(ctx, batch, err, took)
}

// settleOutcome settles batch, whose handler returned err.
func (s settling) settleOutcome(ctx context.Context, batch []Delivery, err error, took time.Duration) {
	var failures Failures
	switch {
	case err == nil:
		s.ack(batch, took, false)
	case errors.As(err, &failures):
		var ok, held []Delivery
		var dependency string
		for i, d := range batch {
			ferr, failed := failures[i]
			if !failed {
				ok = append(ok, d)
				continue
			}
			if dep, down := UnavailableDependency(ferr); down {
				held, dependency = append(held, d), dep
				continue
			}
			s.settle(ctx, d, ferr)
		}
		s.ack(ok, took, len(held) > 0)
		if len(held) > 0 {
			s.hold(ctx, held, dependency)
		}
	default:
		if dep, down := UnavailableDependency(err); down {
			s.hold(ctx, batch, dep)
			return
		}
		if len(batch) == 1 {
			s.settle(ctx, batch[0], err)
			return
		}
		s.log.Warn("batch failed, handling its messages one by one", zap.String("queue", s.cfg.Queue), zap.Error(err), zap.Int("size", len(batch)))
		for _, d := range batch {
			s.batch(ctx, []Delivery{d})
		}
	}
}

// Outage backoff: a consumer whose dependency is down tries again after
// outageFirst, doubling up to outageMax.
const (
	outageFirst = 500 * time.Millisecond
	outageMax   = 10 * time.Second
)

// hold keeps held, whose dependency is down, unacknowledged (so none of their
// retries is spent, and the broker sends nothing past the prefetch window
// meanwhile) and takes no new work until the dependency answers again: it
// tries the first message alone, after a pause that doubles up to
// outageMax, until that one no longer fails for want of the dependency,
// then settles it and hands over the rest as a batch. It gives up when the
// consumer stops or the channel is lost; the broker then delivers the
// messages again.
func (s settling) hold(ctx context.Context, held []Delivery, dependency string) {
	s.waiting(dependency)
	defer s.waiting("")
	s.log.Warn("dependency unavailable: holding messages, taking no new work", zap.String("queue", s.cfg.Queue),
		zap.String("dependency", dependency), zap.Int("held", len(held)))
	for pause := outageFirst; ; pause = min(2*pause, outageMax) {
		select {
		case <-ctx.Done():
			return
		case <-s.lost:
			return
		case <-time.After(pause):
		}
		probe := held[:1]
		start := time.Now()
		err := s.call(ctx, probe, s.h)
		if dep, down := UnavailableDependency(err); down {
			if dep != dependency {
				s.waiting(dep)
				dependency = dep
			}
			continue
		}
		s.log.Info("dependency answers again: resuming", zap.String("queue", s.cfg.Queue), zap.String("dependency", dependency))
		s.waiting("")
		s.settleOutcome(ctx, probe, err, time.Since(start))
		if len(held) > 1 {
			s.batch(ctx, held[1:])
		}
		return
	}
}

// waiting records the dependency the consumer waits for ("" for none), in
// its metrics and its service's readiness.
func (s settling) waiting(dependency string) {
	was := s.conn.setWaiting(s.cfg.Queue, dependency)
	s.metrics.Waiting(dependency, was)
}

// ack acks the deliveries of a batch whose effects are committed. Without
// others held on the channel that is one multiple ack up to the last of
// them: every delivery before it on this channel is decided, because a
// channel has one batch in hand at a time and its failed messages were
// settled first. With some held (a dependency down) each is acked alone,
// so that the held ones stay unacknowledged; the transport sends the acks
// in one write all the same.
func (c *consumer) ack(done []Delivery, took time.Duration, holding bool) {
	if len(done) == 0 {
		return
	}
	var err error
	if holding {
		for _, d := range done {
			if aerr := d.raw.Ack(false); aerr != nil {
				err = aerr
			}
		}
	} else {
		err = done[len(done)-1].raw.Ack(len(done) > 1)
	}
	if err != nil {
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

// settle retries or dead-letters one delivery whose handler failed. The
// retry or dead-letter copy is published with a confirm, and mandatory (a
// copy no queue takes comes back, instead of being dropped), before the
// original is acked. While the copy cannot be published (the broker
// refuses or blocks publishers) the original is kept, and the publish tried
// again with a growing pause, taking no new work: the broker is the
// dependency that is down, and requeueing the message would count a
// delivery against its limit for nothing.
func (s settling) settle(ctx context.Context, d Delivery, err error) {
	log := s.log.With(d.Fields()...)
	var next Message // the copy: to the DLQ or the next retry queue
	var reason string
	switch {
	case IsPermanent(err):
		log.Error("dead-lettering: permanent error", zap.Error(err))
		next, reason = s.copyOf(d, ExchangeDLX, s.cfg.Queue, err, ReasonPermanent), metrics.ReasonPermanent
	case d.Attempt > len(s.cfg.Retry):
		log.Error("dead-lettering: retries exhausted", zap.Error(err))
		next, reason = s.copyOf(d, ExchangeDLX, s.cfg.Queue, err, ReasonExhausted), metrics.ReasonExhausted
	default:
		delay := s.cfg.Retry[d.Attempt-1]
		log.Warn("retrying later", zap.Error(err), zap.Duration("delay", delay))
		next = s.copyOf(d, "", RetryQueue(s.cfg.Queue, delay), err, "")
	}
	next.Mandatory = true
	for pause := outageFirst; ; pause = min(2*pause, outageMax) {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		perr := s.pub.Publish(pctx, next)
		cancel()
		if perr == nil {
			break
		}
		if pause == outageFirst {
			log.Error("could not move the message on; keeping it and trying again", zap.Error(perr))
			s.waiting("broker")
			defer s.waiting("")
		}
		select {
		case <-ctx.Done():
			return // it goes back to the queue when the channel closes
		case <-s.lost:
			return
		case <-time.After(pause):
		}
	}
	if reason == "" {
		s.metrics.Retried()
	} else {
		s.metrics.DeadLettered(reason)
	}
	if aerr := d.raw.Ack(false); aerr != nil {
		// The copy is already safe; the original comes back and the
		// handler's inbox makes the second delivery harmless.
		log.Warn("ack failed; the broker will redeliver", zap.Error(aerr))
	}
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
