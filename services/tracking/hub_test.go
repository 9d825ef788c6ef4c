package main

import (
	"slices"
	"sync"
	"testing"
)

type recordingBinder struct {
	mu    sync.Mutex
	calls []string
}

func (b *recordingBinder) Bind(r string) {
	b.mu.Lock()
	b.calls = append(b.calls, "+"+r)
	b.mu.Unlock()
}
func (b *recordingBinder) Unbind(r string) {
	b.mu.Lock()
	b.calls = append(b.calls, "-"+r)
	b.mu.Unlock()
}

func TestHubBindsWhileWatched(t *testing.T) {
	b := &recordingBinder{}
	h := NewHub(b)
	w1, w2 := newWatcher("o1", "r1"), newWatcher("o2", "r1")
	h.Add(w1)
	h.Add(w2)
	h.Remove(w1)
	h.Remove(w2)
	if want := []string{"+r1", "-r1"}; !slices.Equal(b.calls, want) {
		t.Fatalf("binder calls %v, want %v", b.calls, want)
	}
}

func TestHubDropsStaleFixes(t *testing.T) {
	h := NewHub(&recordingBinder{})
	w := newWatcher("o1", "r1")
	h.Add(w)
	for _, seq := range []int64{5, 3, 5, 6, 4} {
		h.Fix(Fix{RiderID: "r1", Seq: seq})
	}
	fix, _, _ := w.take()
	if fix == nil || fix.Seq != 6 {
		t.Fatalf("pending fix %+v, want seq 6", fix)
	}
	if got := h.Stats.Stale.Load(); got != 3 {
		t.Fatalf("stale = %d, want 3", got)
	}
	if got := h.Stats.Coalesced.Load(); got != 1 {
		t.Fatalf("coalesced = %d, want 1 (5 replaced by 6 unsent)", got)
	}
	h.Fix(Fix{RiderID: "r1", Seq: 6})
	if fix, _, _ := w.take(); fix != nil {
		t.Fatalf("a fix delivered twice: %+v", fix)
	}
}

func TestHubAssignMovesWatchers(t *testing.T) {
	b := &recordingBinder{}
	h := NewHub(b)
	w := newWatcher("o1", "")
	h.Add(w)
	h.Assign("o1", "r9")
	h.Fix(Fix{RiderID: "r9", Seq: 1})
	if fix, _, _ := w.take(); fix == nil {
		t.Fatal("watcher did not follow the assignment")
	}
	h.Remove(w)
	if want := []string{"+r9", "-r9"}; !slices.Equal(b.calls, want) {
		t.Fatalf("binder calls %v, want %v", b.calls, want)
	}
}

func TestSlowWatcherOverflows(t *testing.T) {
	w := newWatcher("o1", "")
	for i := 0; i < maxPendingStatuses+1; i++ {
		w.offerStatus(statusMsg{Status: "paid"})
	}
	if _, st, overflow := w.take(); !overflow || len(st) != maxPendingStatuses {
		t.Fatalf("statuses %d overflow %v", len(st), overflow)
	}
}
