package main

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
)

const (
	// publishBatch bounds the fixes one PublishBatch call sends: the
	// publisher's connection writes them with one syscall (coalesce.go).
	publishBatch = 256
	// maxPendingRiders bounds the riders with a fix waiting to be
	// published; past it a fix is refused (errFeedBusy). Each rider holds
	// one fix at most, so only a city bigger than this fills it.
	maxPendingRiders = 100_000
)

// publisher publishes riders' fixes to the locations exchange, transient
// and without confirms (a fix lost in a reset is superseded by the next one
// within a second). What waits is the newest fix of each rider and nothing
// older: a fix is worthless once a newer one exists, so a publisher behind
// for a moment sends each rider's latest position once rather than a
// backlog, and a rider's fixes can never overtake each other here.
type publisher struct {
	conn  *broker.Conn
	stats *IngestStats
	log   *zap.Logger
	warn  rate.Sometimes // a broker outage would otherwise log every batch

	mu      sync.Mutex
	pending map[string]Fix // rider → newest fix not yet published
	order   []string       // riders of pending, oldest first
	ready   chan struct{}  // capacity 1: pending is not empty
}

func newPublisher(conn *broker.Conn, stats *IngestStats, log *zap.Logger) *publisher {
	return &publisher{conn: conn, stats: stats, log: log, warn: rate.Sometimes{Interval: 10 * time.Second},
		pending: map[string]Fix{}, ready: make(chan struct{}, 1)}
}

// offer queues f for publishing, replacing an older fix of its rider that
// is still waiting. It reports false when f cannot be taken.
func (p *publisher) offer(f Fix) bool {
	p.mu.Lock()
	prev, waiting := p.pending[f.RiderID]
	switch {
	case waiting && prev.Seq >= f.Seq:
		p.mu.Unlock()
		p.stats.Coalesced.Add(1)
		return true // an older fix: the newer one waiting goes instead
	case waiting:
		p.stats.Coalesced.Add(1)
	case len(p.pending) >= maxPendingRiders:
		p.mu.Unlock()
		return false
	default:
		p.order = append(p.order, f.RiderID)
	}
	p.pending[f.RiderID] = f
	p.mu.Unlock()
	select {
	case p.ready <- struct{}{}:
	default:
	}
	return true
}

// take removes and returns up to max waiting fixes, oldest rider first.
func (p *publisher) take(into []Fix, max int) []Fix {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := min(max, len(p.order))
	for _, r := range p.order[:n] {
		into = append(into, p.pending[r])
		delete(p.pending, r)
	}
	p.order = append(p.order[:0], p.order[n:]...)
	if len(p.order) > 0 {
		select {
		case p.ready <- struct{}{}:
		default:
		}
	}
	return into
}

// run publishes what is offered until ctx is done. Whatever piled up while
// a batch was being sent goes in the next one.
func (p *publisher) run(ctx context.Context) {
	pub := broker.NewTransientPublisher(p.conn, p.log)
	defer pub.Close()
	batch := make([]Fix, 0, publishBatch)
	msgs := make([]broker.Message, 0, publishBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.ready:
		}
		batch = p.take(batch[:0], publishBatch)
		if len(batch) == 0 {
			continue
		}
		msgs = msgs[:0]
		now := time.Now()
		for i := range batch {
			f := &batch[i]
			f.PX = now.UnixNano()
			body, err := json.Marshal(f)
			if err != nil {
				continue // cannot happen: numbers are finite, checked at ingest
			}
			msgs = append(msgs, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: riderKey(f.RiderID), Body: body,
				Transient: true, Timestamp: now})
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		acked, err := pub.PublishBatch(pctx, msgs)
		cancel()
		lost := countFalse(acked)
		p.stats.Published.Add(int64(len(msgs)) - lost)
		if err != nil {
			p.stats.Failed.Add(lost)
			p.warn.Do(func() { p.log.Warn("fixes not published", zap.Int64("lost", lost), zap.Error(err)) })
		}
	}
}

func countFalse(bs []bool) int64 {
	var n int64
	for _, b := range bs {
		if !b {
			n++
		}
	}
	return n
}
