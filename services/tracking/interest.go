package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// How instances tell each other which riders their customers watch.
const (
	// announceEvery is how often an instance announces every rider it
	// watches; a rider newly watched is announced at once.
	announceEvery = time.Second
	// interestTTL is how long an announcement counts: an instance that has
	// not been heard from for this long is gone (or cannot be heard), and
	// its riders are no longer published for it.
	interestTTL = 3*announceEvery + announceEvery/2
	// interestWarmUp is how long after it starts hearing announcements an
	// instance publishes every fix anyway: until the others have answered
	// its hello, it cannot know what they watch.
	interestWarmUp = announceEvery + announceEvery/2
)

// announcement is what an instance says on the locations exchange (routing
// key "watch.<instance>") about the riders its customers watch: all of
// them (Full), or riders newly watched. Hello asks every other instance
// for its full list at once.
type announcement struct {
	Instance string   `json:"instance"`
	Full     bool     `json:"full,omitempty"`
	Hello    bool     `json:"hello,omitempty"`
	Riders   []string `json:"riders"`
}

// Interest knows which riders customers on other instances watch, from
// their announcements, so that the ingest publishes only those riders'
// fixes: the broker then carries what someone can receive instead of the
// whole city. While this instance cannot hear the announcements (its relay
// has no queue, or has just got one), Remote says yes to every rider: fixes
// are published as before the announcements existed, never withheld.
type Interest struct {
	self string // this instance's id

	live atomic.Bool   // the announcements are heard, and were for interestWarmUp
	gen  atomic.Uint64 // counts Up and Down calls, so a stale warm-up timer does nothing

	mu    sync.RWMutex
	peers map[string]*peer
	count map[string]int32 // rider → how many other instances watch it
}

// peer is another instance as its announcements describe it.
type peer struct {
	riders map[string]struct{}
	heard  time.Time
}

// NewInterest returns the interest of the instance self, hearing nothing
// yet.
func NewInterest(self string) *Interest {
	return &Interest{self: self, peers: map[string]*peer{}, count: map[string]int32{}}
}

// Remote reports whether rider's fixes must be published: some other
// instance watches it, or this one cannot tell.
func (i *Interest) Remote(rider string) bool {
	if !i.live.Load() {
		return true
	}
	i.mu.RLock()
	n := i.count[rider]
	i.mu.RUnlock()
	return n > 0
}

// Up says the announcements can be heard from now on; Remote trusts them
// after the warm-up.
func (i *Interest) Up() {
	g := i.gen.Add(1)
	time.AfterFunc(interestWarmUp, func() {
		if i.gen.Load() == g {
			i.live.Store(true)
		}
	})
}

// Down says the announcements cannot be heard.
func (i *Interest) Down() {
	i.gen.Add(1)
	i.live.Store(false)
}

// Live reports whether Remote is trusting the announcements.
func (i *Interest) Live() bool { return i.live.Load() }

// Peers returns how many other instances are known, and how many riders
// they watch in all.
func (i *Interest) Peers() (instances, riders int) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return len(i.peers), len(i.count)
}

// apply takes in an announcement heard at now. Its own come back to an
// instance too (every relay queue is bound to every announcement), and are
// skipped.
func (i *Interest) apply(a announcement, now time.Time) {
	if a.Instance == i.self || a.Instance == "" {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	p := i.peers[a.Instance]
	if p == nil {
		p = &peer{riders: map[string]struct{}{}}
		i.peers[a.Instance] = p
	}
	p.heard = now
	if a.Full {
		keep := make(map[string]struct{}, len(a.Riders))
		for _, r := range a.Riders {
			keep[r] = struct{}{}
		}
		for r := range p.riders {
			if _, ok := keep[r]; !ok {
				i.forget(p, r)
			}
		}
	}
	for _, r := range a.Riders {
		if _, ok := p.riders[r]; !ok {
			p.riders[r] = struct{}{}
			i.count[r]++
		}
	}
}

// forget removes rider from p's riders. i.mu must be held.
func (i *Interest) forget(p *peer, rider string) {
	delete(p.riders, rider)
	if i.count[rider]--; i.count[rider] <= 0 {
		delete(i.count, rider)
	}
}

// expire forgets the instances not heard from since before now-interestTTL.
func (i *Interest) expire(now time.Time) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for id, p := range i.peers {
		if now.Sub(p.heard) > interestTTL {
			for r := range p.riders {
				i.forget(p, r)
			}
			delete(i.peers, id)
		}
	}
}

// Run forgets silent instances until ctx is done.
func (i *Interest) Run(ctx context.Context) error {
	t := time.NewTicker(announceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			i.expire(now)
		}
	}
}
