// Package dlq lists, shows, replays and discards the messages in Dabba's
// dead-letter queues ("<queue>.dlq", one per work queue of
// broker.WorkQueues), over AMQP. The dabba command and the orders
// service's admin API are its two front ends.
//
// Nothing is lost on the way: a replayed message is published back to its
// work queue with a publisher confirm, and only then is its dead copy
// acknowledged; a message that is not chosen, or whose replay failed, goes
// back to the dead-letter queue as it was.
package dlq

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
)

// ErrUnknownQueue is returned for a queue that is not a work queue of the
// topology (and so has no dead-letter queue).
var ErrUnknownQueue = errors.New("unknown queue")

// Origin returns the work queue whose dead-letter queue name is: "payment"
// and "payment.dlq" both give "payment". Only the work queues of
// broker.WorkQueues are accepted.
func Origin(name string) (string, error) {
	origin := strings.TrimSuffix(name, ".dlq")
	for _, q := range broker.WorkQueues {
		if q.Name == origin {
			return origin, nil
		}
	}
	return "", fmt.Errorf("%w %q: one of %s", ErrUnknownQueue, name, strings.Join(Origins(), ", "))
}

// Origins lists the work queues that have a dead-letter queue.
func Origins() []string {
	var names []string
	for _, q := range broker.WorkQueues {
		names = append(names, q.Name)
	}
	return names
}

// Message is a dead message as an operator needs to see it.
type Message struct {
	ID      string `json:"message_id"`
	OrderID string `json:"order_id,omitempty"` // the correlation id
	Type    string `json:"type,omitempty"`
	// Reason is why it died: the consumer's x-dabba-reason
	// ("permanent-error", "retries-exhausted") or, for what the broker
	// dead-lettered itself, x-death's reason ("delivery_limit").
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"` // the handler's last error
	// OriginQueue is the work queue it died in, where a replay sends it.
	OriginQueue string `json:"origin_queue"`
	// RoutingKey is the key it was first published with; empty when no
	// header records it (then it cannot be replayed).
	RoutingKey string `json:"routing_key"`
	// Attempts counts the failed attempts the consumer recorded.
	Attempts int       `json:"attempts"`
	DeadAt   time.Time `json:"dead_at,omitzero"`
	// AgeSeconds is how long it has been dead.
	AgeSeconds float64 `json:"age_seconds"`
	Replays    int     `json:"replays,omitempty"`
	// Deaths is the broker's x-death history, newest first.
	Deaths      []Death `json:"deaths,omitempty"`
	ContentType string  `json:"content_type,omitempty"`
	Body        string  `json:"body"` // as text; "base64:…" when it is not UTF-8
}

// Death is one entry of the broker's x-death header: the broker
// dead-lettered the message Count times from Queue for Reason.
type Death struct {
	Queue       string    `json:"queue"`
	Reason      string    `json:"reason"`
	Count       int64     `json:"count"`
	Exchange    string    `json:"exchange,omitempty"`
	RoutingKeys []string  `json:"routing_keys,omitempty"`
	Time        time.Time `json:"time,omitzero"`
}

// Age is how long the message has been dead at now (0 when unknown).
func (m Message) Age(now time.Time) time.Duration {
	if m.DeadAt.IsZero() {
		return 0
	}
	return now.Sub(m.DeadAt)
}

// parse reads a delivery from origin's dead-letter queue.
func parse(origin string, d amqp.Delivery, now time.Time) Message {
	h := d.Headers
	m := Message{
		ID: d.MessageId, OrderID: d.CorrelationId, Type: d.Type, OriginQueue: origin, ContentType: d.ContentType,
		Error: str(h, broker.HeaderError), Attempts: num(h, broker.HeaderAttempt), Replays: num(h, broker.HeaderReplays),
		Deaths: deaths(h), Body: bodyText(d.Body),
	}
	m.Reason = str(h, broker.HeaderReason)
	if m.Reason == "" && len(m.Deaths) > 0 {
		m.Reason = m.Deaths[0].Reason
	}
	if m.Reason == "" {
		m.Reason = "unknown"
	}
	// The consumer keeps the original key in a header through retries and
	// dead-lettering; the broker's own dead-lettering (the delivery limit)
	// replaces the key and keeps the original in x-death.
	m.RoutingKey = str(h, broker.HeaderRoutingKey)
	if m.RoutingKey == "" {
		for _, dt := range m.Deaths {
			if dt.Queue == origin && len(dt.RoutingKeys) > 0 {
				m.RoutingKey = dt.RoutingKeys[0]
				break
			}
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, str(h, broker.HeaderDeadAt)); err == nil {
		m.DeadAt = t
	} else if len(m.Deaths) > 0 && !m.Deaths[0].Time.IsZero() {
		m.DeadAt = m.Deaths[0].Time
	} else if !d.Timestamp.IsZero() {
		m.DeadAt = d.Timestamp
	}
	if !m.DeadAt.IsZero() {
		m.AgeSeconds = now.Sub(m.DeadAt).Seconds()
	}
	return m
}

func str(h amqp.Table, key string) string {
	s, _ := h[key].(string)
	return s
}

func num(h amqp.Table, key string) int {
	switch v := h[key].(type) {
	case int32:
		return int(v)
	case int64:
		return int(v)
	case int:
		return v
	case int16:
		return int(v)
	case int8:
		return int(v)
	}
	return 0
}

func deaths(h amqp.Table) []Death {
	list, _ := h["x-death"].([]any)
	var out []Death
	for _, e := range list {
		t, ok := e.(amqp.Table)
		if !ok {
			continue
		}
		dt := Death{Queue: str(t, "queue"), Reason: str(t, "reason"), Exchange: str(t, "exchange")}
		switch c := t["count"].(type) {
		case int64:
			dt.Count = c
		case int32:
			dt.Count = int64(c)
		}
		dt.Time, _ = t["time"].(time.Time)
		keys, _ := t["routing-keys"].([]any)
		for _, k := range keys {
			if s, ok := k.(string); ok {
				dt.RoutingKeys = append(dt.RoutingKeys, s)
			}
		}
		out = append(out, dt)
	}
	return out
}

func bodyText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return "base64:" + base64Std(b)
}

// stripped are the headers that describe a message's failure; a replayed
// copy drops them so the consumer sees a first attempt (x-dabba-attempt
// gone), not a message one failure away from the DLQ again.
var stripped = []string{
	"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
	"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
	broker.HeaderAttempt, broker.HeaderError, broker.HeaderReason, broker.HeaderQueue, broker.HeaderDeadAt,
}

// replayCopy is what a replay publishes to the origin queue through the
// default exchange: the message as first published (id, type, correlation
// id, timestamp, body, the original routing key in x-dabba-routing-key as
// the retry ladder carries it), without its failure history.
func replayCopy(d amqp.Delivery, m Message, now time.Time) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range d.Headers {
		if !slices.Contains(stripped, k) {
			h[k] = v
		}
	}
	h[broker.HeaderRoutingKey] = m.RoutingKey
	h[broker.HeaderReplays] = int32(m.Replays + 1)
	h[broker.HeaderReplayedAt] = now.UTC().Format(time.RFC3339Nano)
	return amqp.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, DeliveryMode: amqp.Persistent,
		Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo, MessageId: d.MessageId,
		Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body,
	}
}

// Selector chooses the messages a replay or discard acts on: exactly one of
// IDs, OlderThan or All.
type Selector struct {
	IDs       []string      // these message ids
	OlderThan time.Duration // dead for longer than this
	All       bool          // every message in the queue
}

// Validate says what is wrong with s, if anything.
func (s Selector) Validate() error {
	n := 0
	if len(s.IDs) > 0 {
		n++
	}
	if s.OlderThan != 0 {
		n++
	}
	if s.All {
		n++
	}
	switch {
	case n == 0:
		return errors.New("choose the messages: message ids, an age (older than) or all")
	case n > 1:
		return errors.New("choose the messages one way only: message ids, an age (older than) or all")
	case s.OlderThan < 0:
		return errors.New("older than must be a positive duration")
	}
	for _, id := range s.IDs {
		if id == "" {
			return errors.New("empty message id")
		}
	}
	return nil
}

// matches reports whether s chooses m at now. A message of unknown age is
// never "older than".
func (s Selector) matches(m Message, now time.Time) bool {
	switch {
	case s.All:
		return true
	case s.OlderThan > 0:
		return !m.DeadAt.IsZero() && m.Age(now) > s.OlderThan
	}
	return slices.Contains(s.IDs, m.ID)
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
