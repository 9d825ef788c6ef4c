package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/metrics"
)

// ErrNotConfirmed means the broker did not confirm a message: it nacked it,
// or the channel was lost before the confirm arrived. The message may or may
// not have been routed; the caller must publish it again (consumers are
// idempotent, so a duplicate is harmless while a loss is not).
var ErrNotConfirmed = errors.New("message not confirmed by the broker")

// Message is one message to publish.
type Message struct {
	Exchange      string
	RoutingKey    string
	MessageID     string
	Type          string
	CorrelationID string
	ContentType   string
	Body          []byte
	Headers       amqp.Table
	Timestamp     time.Time
	// Transient messages are neither persisted nor confirmed (rider fixes:
	// worthless once a newer one exists).
	Transient bool
	// Mandatory messages that no queue takes come back (basic.return) and
	// count as not confirmed, instead of being confirmed and dropped.
	Mandatory bool
}

func (m Message) publishing() amqp.Publishing {
	mode := amqp.Persistent
	if m.Transient {
		mode = amqp.Transient
	}
	ct := m.ContentType
	if ct == "" {
		ct = "application/json"
	}
	ts := m.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	return amqp.Publishing{
		Headers:       m.Headers,
		ContentType:   ct,
		DeliveryMode:  mode,
		CorrelationId: m.CorrelationID,
		MessageId:     m.MessageID,
		Timestamp:     ts,
		Type:          m.Type,
		Body:          m.Body,
	}
}

// Publisher publishes with publisher confirms on a channel of its own, opened
// lazily and replaced after a reconnect. It is safe for concurrent use;
// batches are serialised because a channel is not.
type Publisher struct {
	conn     *Conn
	log      *zap.Logger
	metrics  *metrics.Set
	confirms bool

	mu      sync.Mutex
	ch      *amqp.Channel
	lost    <-chan struct{}
	returns <-chan amqp.Return // mandatory messages no queue took
}

// maxReturns bounds the mandatory messages one batch may hold: the library
// hands each return over before the confirm, and must never block doing it.
const maxReturns = 1024

// NewPublisher returns a publisher on conn's publishing connection (see
// Conn.forPublishing).
func NewPublisher(conn *Conn, log *zap.Logger) *Publisher {
	return &Publisher{conn: conn.forPublishing(), log: log, metrics: conn.metrics, confirms: true}
}

// NewTransientPublisher returns a publisher without confirms, for messages
// that are worthless once a newer one exists (rider fixes): it never waits
// for the broker, and a message lost in a reset is simply superseded.
func NewTransientPublisher(conn *Conn, log *zap.Logger) *Publisher {
	return &Publisher{conn: conn.forPublishing(), log: log, metrics: conn.metrics}
}

// channel returns the current confirm-mode channel, opening a new one when
// there is none or the last was lost. p.mu must be held.
func (p *Publisher) channel(ctx context.Context) (*amqp.Channel, error) {
	if p.ch != nil {
		select {
		case <-p.lost:
			p.drop()
		default:
			return p.ch, nil
		}
	}
	ch, err := p.conn.Channel(ctx)
	if err != nil {
		return nil, err
	}
	if p.confirms {
		if err := ch.Confirm(false); err != nil {
			p.conn.Release(ch)
			return nil, fmt.Errorf("enable confirms: %w", err)
		}
	}
	p.ch, p.lost = ch, ChannelLost(ch)
	p.returns = ch.NotifyReturn(make(chan amqp.Return, maxReturns))
	return ch, nil
}

func (p *Publisher) drop() {
	if p.ch != nil {
		p.conn.Release(p.ch)
	}
	p.ch, p.lost, p.returns = nil, nil, nil
}

// returned takes the returns the library has handed over: by the time a
// confirm has arrived, the return of the same message (which the broker
// sends first) is among them.
func (p *Publisher) returned() map[string]bool {
	var ids map[string]bool
	for {
		select {
		case r := <-p.returns:
			if ids == nil {
				ids = map[string]bool{}
			}
			ids[r.MessageId] = true
		default:
			return ids
		}
	}
}

// Publish publishes one message and, unless it is transient, waits for the
// broker's confirm.
func (p *Publisher) Publish(ctx context.Context, m Message) error {
	acked, err := p.PublishBatch(ctx, []Message{m})
	if err != nil {
		return err
	}
	if !acked[0] {
		return ErrNotConfirmed
	}
	return nil
}

// PublishBatch publishes msgs back to back, then waits for all their confirms
// (an asynchronous window the size of the batch, far faster than one round
// trip each). acked[i] tells whether msgs[i] was confirmed; err is set when
// not every message could even be sent.
func (p *Publisher) PublishBatch(ctx context.Context, msgs []Message) (acked []bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	acked = make([]bool, len(msgs))
	ch, err := p.channel(ctx)
	if err != nil {
		return acked, err
	}
	if p.conn.Blocked() {
		return acked, errors.New("broker is blocking publishers (resource alarm)")
	}
	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	start := time.Now()
	mandatory := 0
	for i, m := range msgs {
		if m.Mandatory {
			if mandatory++; mandatory > maxReturns {
				return acked, fmt.Errorf("more than %d mandatory messages in one batch", maxReturns)
			}
		}
		dc, perr := ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.RoutingKey, m.Mandatory, false, m.publishing())
		if perr != nil {
			err = fmt.Errorf("publish %s: %w", m.RoutingKey, perr)
			p.drop()
			break
		}
		if m.Transient || !p.confirms {
			acked[i] = true
			continue
		}
		confirms[i] = dc
	}
	for i, dc := range confirms {
		if dc == nil {
			continue
		}
		ok, werr := dc.WaitContext(ctx)
		if werr != nil && err == nil {
			err = fmt.Errorf("wait for confirm: %w", werr)
		}
		acked[i] = werr == nil && ok
		if acked[i] {
			p.metrics.Confirmed(time.Since(start))
		} else {
			p.metrics.Unconfirmed(1)
		}
	}
	if mandatory > 0 && p.returns != nil {
		if bounced := p.returned(); len(bounced) > 0 {
			for i, m := range msgs {
				if m.Mandatory && bounced[m.MessageID] {
					acked[i] = false
					if err == nil {
						err = fmt.Errorf("%s to %q returned: no queue is bound for it", m.MessageID, m.RoutingKey)
					}
				}
			}
		}
	}
	return acked, err
}

// Close closes the publisher's channel.
func (p *Publisher) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop()
}
