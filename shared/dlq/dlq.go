package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
)

// Channels opens and releases AMQP channels; *broker.Conn is one.
type Channels interface {
	Channel(ctx context.Context) (*amqp.Channel, error)
	Release(ch *amqp.Channel)
}

// Queue is one dead-letter queue and how many messages it holds.
type Queue struct {
	Name     string `json:"name"`
	Origin   string `json:"origin"`
	Messages int    `json:"messages"`
}

// List returns every dead-letter queue of the topology with its depth.
func List(ctx context.Context, chs Channels) ([]Queue, error) {
	ch, err := chs.Channel(ctx)
	if err != nil {
		return nil, err
	}
	defer chs.Release(ch)
	var out []Queue
	for _, origin := range Origins() {
		q, err := ch.QueueDeclarePassive(broker.DLQ(origin), true, false, false, false, nil)
		if err != nil {
			// A passive declare of a missing queue closes the channel.
			return nil, fmt.Errorf("inspect %s (is the topology declared?): %w", broker.DLQ(origin), err)
		}
		out = append(out, Queue{Name: q.Name, Origin: origin, Messages: q.Messages})
	}
	return out, nil
}

// Page is what Show returns: up to n messages of a dead-letter queue and
// how many it holds in all.
type Page struct {
	Queue    string    `json:"queue"`
	Total    int       `json:"total"`
	Messages []Message `json:"messages"`
}

// Result says what a Replay or Discard did.
type Result struct {
	Queue string `json:"queue"`
	// Depth is the queue's depth when the operation started.
	Depth int `json:"depth"`
	// Scanned is how many messages were looked at.
	Scanned int `json:"scanned"`
	Matched int `json:"matched"`
	// Moved counts the messages replayed (or discarded).
	Moved int `json:"moved"`
	// Failed lists chosen messages left in the dead-letter queue, and why.
	Failed []Failure `json:"failed,omitempty"`
	// Missing lists requested ids that were not in the queue.
	Missing []string `json:"missing,omitempty"`
}

// Failure is a chosen message that stayed where it was.
type Failure struct {
	ID    string `json:"message_id"`
	Error string `json:"error"`
}

// Show returns the first n messages of origin's dead-letter queue (n ≤ 0:
// all of them) and how many it holds. It takes every message to do so and
// puts them all back in the same order (see scan).
//
// Looking is not free: every message shown is delivered and returned, so a
// quorum queue counts one more delivery for it (x-delivery-count). The
// dead-letter queues have no delivery limit on RabbitMQ 3.x; see the README
// for 4.x.
func Show(ctx context.Context, chs Channels, origin string, n int) (Page, error) {
	page := Page{Queue: broker.DLQ(origin), Messages: []Message{}}
	var depth int
	err := scan(ctx, chs, origin, func(d amqp.Delivery, m Message) (bool, error) {
		page.Total++
		if n <= 0 || len(page.Messages) < n {
			page.Messages = append(page.Messages, m)
		}
		return false, nil
	}, &depth, &held{})
	return page, err
}

// Replay sends the messages sel chooses from origin's dead-letter queue
// back to origin, and to origin only (through the default exchange, as the
// retry ladder does), with their message id, type, correlation id, body and
// original routing key, and without their failure headers: the consumer
// handles each like a fresh message, first attempt included. Each dead
// copy is acknowledged only once the broker confirmed its replay; a replay
// that is not confirmed (or not routable) leaves the message where it was.
func Replay(ctx context.Context, chs Channels, origin string, sel Selector) (Result, error) {
	return move(ctx, chs, origin, sel, true)
}

// Discard deletes the messages sel chooses from origin's dead-letter queue.
func Discard(ctx context.Context, chs Channels, origin string, sel Selector) (Result, error) {
	return move(ctx, chs, origin, sel, false)
}

// batch bounds the replays awaiting their confirms at once.
const batch = 100

func move(ctx context.Context, chs Channels, origin string, sel Selector, replay bool) (Result, error) {
	res := Result{Queue: broker.DLQ(origin)}
	if err := sel.Validate(); err != nil {
		return res, err
	}
	var pub *publisher
	if replay {
		p, err := newPublisher(ctx, chs)
		if err != nil {
			return res, err
		}
		defer p.close()
		pub = p
	}
	type pending struct {
		d  amqp.Delivery
		m  Message
		dc *amqp.DeferredConfirmation
	}
	var inflight []pending
	seen := map[string]bool{}
	kept := &held{}
	// flush waits for the confirms of the replays in flight, then settles
	// their dead copies: ack when confirmed, keep otherwise.
	flush := func() error {
		defer func() { inflight = inflight[:0] }()
		for _, p := range inflight {
			err := pub.wait(ctx, p.dc, p.m.ID)
			if err != nil {
				res.Failed = append(res.Failed, Failure{ID: p.m.ID, Error: err.Error()})
				kept.keep(p.d.DeliveryTag)
				continue
			}
			if err := p.d.Ack(false); err != nil {
				// The replay is in the work queue and the dead copy
				// comes back: a duplicate the consumer's inbox absorbs.
				return fmt.Errorf("ack dead copy of %s after its replay: %w", p.m.ID, err)
			}
			res.Moved++
		}
		return nil
	}
	now := time.Now()
	err := scan(ctx, chs, origin, func(d amqp.Delivery, m Message) (bool, error) {
		res.Scanned++
		if !sel.matches(m, now) {
			return false, nil
		}
		res.Matched++
		seen[m.ID] = true
		if !replay {
			if err := d.Ack(false); err != nil {
				return false, fmt.Errorf("discard %s: %w", m.ID, err)
			}
			res.Moved++
			return true, nil
		}
		if m.RoutingKey == "" {
			res.Failed = append(res.Failed, Failure{ID: m.ID, Error: "no header records its original routing key"})
			return false, nil
		}
		dc, err := pub.publish(ctx, origin, replayCopy(d, m, now))
		if err != nil {
			res.Failed = append(res.Failed, Failure{ID: m.ID, Error: err.Error()})
			return false, nil
		}
		inflight = append(inflight, pending{d: d, m: m, dc: dc})
		if len(inflight) >= batch {
			return true, flush()
		}
		return true, nil
	}, &res.Depth, kept, flush)
	for _, id := range sel.IDs {
		if !seen[id] {
			res.Missing = append(res.Missing, id)
		}
	}
	return res, err
}

// scan takes every message origin's dead-letter queue holds when it starts
// (its depth, set in *depth) with basic.get and hands each to visit, which
// either settles it itself and returns true (handing it to kept later if it
// changes its mind), or returns false to leave it in the queue. Before it
// returns, scan calls each of before, then returns every message left to
// the queue, one basic.nack (requeue) each, in the order they came.
//
// The messages are held unacknowledged until the end, and all of them are
// taken, because where a returned message goes depends on the queue: a
// classic queue puts it back in its old place; a quorum queue without a
// delivery limit (RabbitMQ 3.x, as these DLQs are declared) at the back;
// one with a delivery limit (every quorum queue on 4.x) near the head.
// Returning each at once would make the next get fetch it again (head) or
// rotate part of the queue (back); returning all of them in order leaves
// the order as it was in all three cases. basic.nack, not basic.reject:
// RabbitMQ 4.3 counts only a reject as a failed delivery.
func scan(ctx context.Context, chs Channels, origin string, visit func(amqp.Delivery, Message) (bool, error),
	depth *int, kept *held, before ...func() error) (err error) {
	ch, err := chs.Channel(ctx)
	if err != nil {
		return err
	}
	defer chs.Release(ch)
	lost := broker.ChannelLost(ch)
	q, err := ch.QueueDeclarePassive(broker.DLQ(origin), true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", broker.DLQ(origin), err)
	}
	*depth = q.Messages
	limit := q.Messages
	taken := 0
	defer func() {
		for _, f := range before {
			if ferr := f(); ferr != nil && err == nil {
				err = ferr
			}
		}
		slices.Sort(kept.tags)
		for _, tag := range kept.tags {
			if nerr := ch.Nack(tag, false, true); nerr != nil {
				// The channel is gone, and with it the broker
				// returned every message it held.
				if err == nil {
					err = fmt.Errorf("return messages to %s: %w", broker.DLQ(origin), nerr)
				}
				return
			}
		}
		settleReturns(ch, broker.DLQ(origin), *depth-(taken-len(kept.tags)))
	}()
	now := time.Now()
	for ; taken < limit; taken++ {
		select {
		case <-lost:
			// Never get (nor ack) on a recovered channel: its delivery
			// tags start again and would settle other messages.
			return errors.New("broker connection lost; unsettled messages went back to the queue")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		d, ok, err := ch.Get(broker.DLQ(origin), false)
		if err != nil {
			return fmt.Errorf("get from %s: %w", broker.DLQ(origin), err)
		}
		if !ok {
			break
		}
		settled, err := visit(d, parse(origin, d, now))
		if !settled {
			kept.keep(d.DeliveryTag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// settleReturns waits, up to a second, until the queue counts at least n
// ready messages again (its depth at the start less what was settled). A nack returns a message to a quorum queue a moment
// later; without the wait, an operation started right after this one could
// get the messages behind the returned ones first and so reorder the queue.
func settleReturns(ch *amqp.Channel, queue string, n int) {
	for deadline := time.Now().Add(time.Second); n > 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil || q.Messages >= n {
			return
		}
	}
}

// held tracks the messages a scan leaves in the queue.
type held struct{ tags []uint64 }

func (h *held) keep(tag uint64) { h.tags = append(h.tags, tag) }

// publisher publishes replays on a confirm-mode channel with the mandatory
// flag: a message no queue takes comes back as a basic.return (which the
// library hands over before the confirm), instead of being confirmed and
// dropped.
type publisher struct {
	chs     Channels
	ch      *amqp.Channel
	returns chan amqp.Return
	bounced map[string]bool
}

func newPublisher(ctx context.Context, chs Channels) (*publisher, error) {
	ch, err := chs.Channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		chs.Release(ch)
		return nil, fmt.Errorf("enable confirms: %w", err)
	}
	// Room for every return of a full batch, so the library never blocks
	// handing one over.
	returns := ch.NotifyReturn(make(chan amqp.Return, batch+1))
	return &publisher{chs: chs, ch: ch, returns: returns, bounced: map[string]bool{}}, nil
}

func (p *publisher) publish(ctx context.Context, queue string, msg amqp.Publishing) (*amqp.DeferredConfirmation, error) {
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, msg)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", queue, err)
	}
	return dc, nil
}

// wait waits for a replay's confirm and reports whether the broker took it.
func (p *publisher) wait(ctx context.Context, dc *amqp.DeferredConfirmation, id string) error {
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("wait for confirm: %w", err)
	}
	for drained := false; !drained; {
		select {
		case r := <-p.returns:
			p.bounced[r.MessageId] = true
		default:
			drained = true
		}
	}
	switch {
	case !ok:
		return errors.New("the broker refused the replay (nack)")
	case p.bounced[id]:
		return errors.New("the replay was returned unroutable: does the work queue exist?")
	}
	return nil
}

func (p *publisher) close() { p.chs.Release(p.ch) }
