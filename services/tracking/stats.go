package main

import (
	"net/http"
	"runtime"

	"github.com/dabba/dabba/shared/httpx"
)

// handleStats handles "GET /stats": this instance's counters, for the
// benchmark and for operators. With ?gc=1 it collects garbage first, so
// heap figures show live memory (to measure what an idle socket costs).
func handleStats(hub *Hub, relay *Relay, in *Ingest, sockets *Sockets, hist *History) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		var mem runtime.MemStats
		runtime.ReadMemStats(&mem)
		customers, orders, riders := hub.Counts()
		peers, watchedElsewhere := relay.interest.Peers()
		riders, deliveries := in.deliveries.Counts()
		httpx.Encode(w, http.StatusOK, map[string]any{
			"sockets_open":   sockets.Open(),
			"customers":      customers,
			"orders_watched": orders,
			"riders_watched": riders,
			"relay": map[string]int64{
				"bindings":  relay.Bound(),
				"sessions":  relay.Sessions.Load(),
				"malformed": relay.Malformed.Load(),
			},
			"interest": map[string]any{
				"live":           relay.interest.Live(),
				"instances":      peers,
				"riders_watched": watchedElsewhere,
			},
			"fixes_out": map[string]int64{
				"received":  hub.Stats.In.Load(),
				"local":     hub.Stats.Local.Load(),
				"sent":      hub.Stats.Sent.Load(),
				"stale":     hub.Stats.Stale.Load(),
				"coalesced": hub.Stats.Coalesced.Load(),
				"unwatched": hub.Stats.Unwatched.Load(),
			},
			"customers_dropped": hub.Stats.Dropped.Load(),
			"deliveries": map[string]int{
				"riders": riders,
				"orders": deliveries,
			},
			"history": map[string]int64{
				"written": hist.Stats.Written.Load(),
				"shed":    hist.Stats.Shed.Load(),
				"batches": hist.Stats.Batches.Load(),
				"failed":  hist.Stats.Failed.Load(),
				"backlog": int64(hist.Backlog()),
			},
			"go": map[string]uint64{
				"goroutines":  uint64(runtime.NumGoroutine()),
				"heap_alloc":  mem.HeapAlloc,
				"stack_inuse": mem.StackInuse,
				"sys":         mem.Sys,
			},
			"fixes_in": map[string]int64{
				"accepted":  in.Stats.Accepted.Load(),
				"published": in.Stats.Published.Load(),
				"coalesced": in.Stats.Coalesced.Load(),
				"refused":   in.Stats.Refused.Load(),
				"failed":    in.Stats.Failed.Load(),
				"invalid":   in.Stats.Invalid.Load(),
				"limited":   in.Stats.Limited.Load(),
			},
		})
	})
}
