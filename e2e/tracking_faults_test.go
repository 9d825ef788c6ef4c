package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestFaultTrackingBrokerRestart stops and starts RabbitMQ (the
// application, then the whole node) under a customer watching a rider: the
// customer's socket stays open, the relay declares its queue and binds the
// rider again by itself, and fixes reach the customer again, with no
// service restarted.
func TestFaultTrackingBrokerRestart(t *testing.T) {
	needFaults(t)
	tracking := base(ports.Tracking)
	for _, how := range []string{"app", "node"} {
		t.Run(how, func(t *testing.T) {
			// A fault test before this one may have restarted the
			// broker: start from a stack that has recovered.
			wantAllReady(t, nil, time.Minute)
			o, r := assignedOrder(t)
			s := openTrack(t, tracking, o.ID, o.TrackingToken)
			mustFirstFix(t, s, tracking, r)
			restartBroker(t, how, func() {
				// While the broker is away the ingest refuses fixes rather
				// than queueing them; the customer's socket stays open.
				eventually(t, 10*time.Second, "fixes refused while the broker is down", func() error {
					r.seq++
					if code := r.post(t, tracking, r.seq); code != http.StatusServiceUnavailable {
						return fmt.Errorf("fix answered %d, want 503", code)
					}
					return nil
				})
			})
			deadline := time.Now().Add(60 * time.Second)
			for {
				r.seq++
				r.post(t, tracking, r.seq) // 503 until the ingest has its channel back
				if m, ok := s.nextLocation(500 * time.Millisecond); ok {
					if m.Seq != r.seq && m.Seq != r.seq-1 {
						t.Fatalf("first fix after the restart: seq %d, want one just posted (%d)", m.Seq, r.seq)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatal("no fix reached the customer after the broker came back")
				}
			}
		})
	}
}
