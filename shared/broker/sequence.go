package broker

import (
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers of per-order ordering (shared/consumer): the outbox numbers each
// order's events as they are written, and the relay sends the numbers on.
const (
	// HeaderSeq is the event's number among its order's events: 1 for the
	// first.
	HeaderSeq = "x-dabba-seq"
	// HeaderPrior lists, comma-separated and oldest first, the routing
	// keys of the order's events before this one.
	HeaderPrior = "x-dabba-prior"
	// HeaderWaitGivenUp marks an event dead-lettered because its
	// predecessor never came: replayed, it is applied without waiting
	// again.
	HeaderWaitGivenUp = "x-dabba-wait-given-up"
)

// SetSequence writes an event's number and the routing keys of its order's
// earlier events into h; seq 0 (an event written with ordering off) writes
// nothing.
func SetSequence(h amqp.Table, seq int, prior []string) {
	if seq <= 0 {
		return
	}
	h[HeaderSeq] = int32(seq)
	h[HeaderPrior] = strings.Join(prior, ",")
}

// Sequence returns the event's number and the routing keys of its order's
// earlier events, or 0 and nil when it carries none (or nonsense).
func (d Delivery) Sequence() (seq int, prior []string) {
	seq = headerInt(d.Headers, HeaderSeq)
	p, _ := d.Headers[HeaderPrior].(string)
	if seq == 0 || p == "" {
		return seq, nil
	}
	prior = strings.Split(p, ",")
	if len(prior) != seq-1 {
		return 0, nil // not what SetSequence wrote: take it unordered
	}
	return seq, prior
}

// After returns the number of the last event before seq, among the order's
// events prior lists, that q's bindings route to q (0 if none): the event an
// ordered consumer of q must have applied first.
func (q WorkQueue) After(prior []string) int {
	for i := len(prior) - 1; i >= 0; i-- {
		if q.Binds(prior[i]) {
			return i + 1
		}
	}
	return 0
}
