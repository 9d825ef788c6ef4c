package main

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"
)

func TestInterest(t *testing.T) {
	in := NewInterest("me")
	if !in.Remote("r1") {
		t.Fatal("an instance that hears no announcements must publish every rider")
	}
	now := t0
	in.apply(announcement{Instance: "a", Full: true, Riders: []string{"r1", "r2"}}, now)
	in.apply(announcement{Instance: "b", Riders: []string{"r2"}}, now)
	in.apply(announcement{Instance: "me", Full: true, Riders: []string{"mine"}}, now) // its own: skipped
	in.live.Store(true)                                                               // as after the warm-up
	for rider, want := range map[string]bool{"r1": true, "r2": true, "r3": false, "mine": false} {
		if got := in.Remote(rider); got != want {
			t.Errorf("Remote(%s) = %v, want %v", rider, got, want)
		}
	}
	t.Run("FullReplaces", func(t *testing.T) {
		in.apply(announcement{Instance: "a", Full: true, Riders: []string{"r3"}}, now)
		if in.Remote("r1") || !in.Remote("r2") || !in.Remote("r3") {
			t.Fatalf("after a's new list: r1 %v r2 %v r3 %v, want false true true", in.Remote("r1"), in.Remote("r2"), in.Remote("r3"))
		}
	})
	t.Run("SilentInstancesExpire", func(t *testing.T) {
		in.apply(announcement{Instance: "b", Full: true, Riders: []string{"r2"}}, now.Add(interestTTL))
		in.expire(now.Add(interestTTL + time.Millisecond))
		if in.Remote("r3") || !in.Remote("r2") {
			t.Fatalf("a expired, b not: r3 %v r2 %v", in.Remote("r3"), in.Remote("r2"))
		}
		if n, riders := in.Peers(); n != 1 || riders != 1 {
			t.Fatalf("peers %d riders %d, want 1 1", n, riders)
		}
	})
	t.Run("DownPublishesEverything", func(t *testing.T) {
		in.Down()
		if !in.Remote("r9") {
			t.Fatal("Remote false while announcements cannot be heard")
		}
		in.Up()
		if !in.Remote("r9") {
			t.Fatal("Remote false during the warm-up")
		}
	})
}

func TestRelayHearsAnnouncements(t *testing.T) {
	in := NewInterest("me")
	r := NewRelay(nil, in, zaptest.NewLogger(t))
	sink := &recordingSink{}
	r.handle(amqp.Delivery{RoutingKey: "watch.a", Body: []byte(`{"instance":"a","full":true,"hello":true,"riders":["r1"]}`)}, sink)
	r.handle(amqp.Delivery{RoutingKey: "watch.b", Body: []byte(`{"instance":"a","riders":["r2"]}`)}, sink) // key and body disagree
	in.live.Store(true)
	if !in.Remote("r1") || in.Remote("r2") {
		t.Fatalf("r1 %v r2 %v, want true false", in.Remote("r1"), in.Remote("r2"))
	}
	if r.Malformed.Load() != 1 {
		t.Fatalf("malformed %d, want 1", r.Malformed.Load())
	}
	select {
	case <-r.hello:
	default:
		t.Fatal("a hello was not answered with a full announcement")
	}
}

func TestPublisherKeepsNewestPerRider(t *testing.T) {
	p := newPublisher(nil, &IngestStats{}, zaptest.NewLogger(t))
	for _, f := range []Fix{{RiderID: "a", Seq: 1}, {RiderID: "b", Seq: 1}, {RiderID: "a", Seq: 3}, {RiderID: "a", Seq: 2}} {
		if !p.offer(f) {
			t.Fatalf("offer %+v refused", f)
		}
	}
	got := p.take(nil, 10)
	if len(got) != 2 || got[0].RiderID != "a" || got[0].Seq != 3 || got[1].RiderID != "b" {
		t.Fatalf("took %+v, want a's seq 3 then b's seq 1", got)
	}
	if p.stats.Coalesced.Load() != 2 {
		t.Fatalf("coalesced %d, want 2", p.stats.Coalesced.Load())
	}
	if got := p.take(nil, 10); len(got) != 0 {
		t.Fatalf("took %+v again", got)
	}
}
