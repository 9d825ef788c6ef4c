package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stages of a fix's way from a rider to a customer, as fixTimes records
// them (seconds, in dabba_tracking_fix_seconds):
//
//	receive  the fix's own timestamp → the ingest read it (the rider's clock:
//	         network and the rider socket's queue, plus any clock skew)
//	ingest   read → handed to the local hub (path local), or → published
//	         (path broker: the wait for the publisher)
//	broker   published by the ingesting instance → handed to this
//	         instance's watchers (RabbitMQ and the relay; the two
//	         instances' clocks)
//	socket   handed to the watchers → written to the customer's socket
//	         (the writer's wait for the CPU, a slower write before it)
//	total    read by the ingest → written to the customer's socket
var fixStages = []string{"receive", "ingest", "broker", "socket", "total"}

// fixTimes records where fixes written to customers spent their time.
type fixTimes struct {
	obs map[string]map[string]prometheus.Observer // path → stage
}

// newFixTimes records into vec; a nil vec records nothing.
func newFixTimes(vec *prometheus.HistogramVec) *fixTimes {
	t := &fixTimes{obs: map[string]map[string]prometheus.Observer{}}
	if vec == nil {
		return t
	}
	for _, path := range []string{viaLocal, viaBroker} {
		t.obs[path] = map[string]prometheus.Observer{}
		for _, stage := range fixStages {
			if path == viaLocal && stage == "broker" {
				continue
			}
			t.obs[path][stage] = vec.WithLabelValues(path, stage)
		}
	}
	return t
}

// written records a fix written to a customer at done. A fix read from the
// database at connect (no path) is not recorded.
func (t *fixTimes) written(f *liveFix, done time.Time) {
	o := t.obs[f.via]
	if o == nil || f.RX == 0 {
		return
	}
	sec := func(from, to int64) float64 { return max(0, float64(to-from)/1e9) }
	end := done.UnixNano()
	o["receive"].Observe(sec(f.TS.UnixNano(), f.RX))
	if f.via == viaBroker {
		o["ingest"].Observe(sec(f.RX, f.PX))
		o["broker"].Observe(sec(f.PX, f.offered))
	} else {
		o["ingest"].Observe(sec(f.RX, f.offered))
	}
	o["socket"].Observe(sec(f.offered, end))
	o["total"].Observe(sec(f.RX, end))
}
