package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/token"
)

// runRiders names this run's riders apart from earlier runs': tracking
// remembers each rider's latest seq, and a fix not newer than it is stale.
var runRiders = fmt.Sprintf("bench-%d", time.Now().Unix())

func riderID(i int) string { return fmt.Sprintf("%s-rider-%d", runRiders, i) }

func trackingURL(scheme string) string { return trackingAt(scheme, benchPorts.Tracking) }

func trackingAt(scheme string, port int) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
}

// secondTrackingPort is where the locations step starts a second tracking
// instance, whose customers get their fixes through RabbitMQ.
const secondTrackingPort = 19181

// LocationResults are the locations step's figures.
type LocationResults struct {
	Riders    int `json:"riders"`
	Customers int `json:"customers"`
	// Instances is how many tracking instances served them: the riders'
	// own, and a second one whose customers get fixes through RabbitMQ.
	Instances    int     `json:"tracking_instances"`
	OfferedPerS  float64 `json:"fixes_offered_per_s"`
	IngestedPerS float64 `json:"fixes_ingested_per_s"`
	PublishedPer float64 `json:"fixes_published_per_s"` // to the locations exchange: what another instance watches
	Refused      int64   `json:"fixes_refused"`         // error frames: rate limit, broker away
	// Closed counts rider sockets the service closed during the run
	// (a rider too slow to read its error frames, say): a rider app
	// would reconnect; the bench stops that rider and goes on.
	Closed  int64 `json:"rider_sockets_closed"`
	Latency Lat   `json:"rider_to_customer_latency"`
	// ByPath splits Latency: "local" customers are on the riders'
	// instance, "broker" ones on the other.
	ByPath map[string]Lat `json:"latency_by_path"`
	// Stages is where fixes written to customers spent their time, per
	// path and stage, from the services' histograms (services/tracking/times.go).
	Stages map[string]map[string]StageLat `json:"stages"`
	// GeneratorLag is how late the load generator sent fixes after their
	// scheduled time: the machine's load slowing the riders' side.
	GeneratorLag      Lat     `json:"generator_lag"`
	Stale             int64   `json:"dropped_stale"`
	Coalesced         int64   `json:"dropped_coalesced"`
	FractionOfCeiling float64 `json:"fraction_of_transient_ceiling"`
	// CPU while the fixes flowed: milliseconds per 1,000 fixes ingested,
	// per process (idle costs included), and the share of all cores busy.
	CPUMsPer1000 map[string]float64 `json:"cpu_ms_per_1000_fixes"`
	CoresBusy    float64            `json:"cores_busy_fraction"`
	// The path travelled: rows the history writers (every instance)
	// committed a second while the fixes flowed, rows they shed, and the
	// same run's ceiling for writing such rows (copyCeiling).
	HistoryRowsPerS     float64 `json:"history_rows_per_s"`
	HistoryShed         int64   `json:"history_rows_shed"`
	CopyCeilingRowsPerS float64 `json:"postgres_copy_ceiling_rows_per_s"`
	Profiles            string  `json:"profiles,omitempty"` // where DABBA_BENCH_PPROF's profiles went
}

// StageLat summarises one stage from a histogram's buckets (upper bounds,
// so within a bucket's width, 1.5×).
type StageLat struct {
	N   int64   `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
}

func (l *LocationResults) print(tw io.Writer, c float64) {
	fmt.Fprintf(tw, "locations: %d riders, %d customers, %d tracking instances: fixes ingested\t%.0f/s of %.0f/s offered (%.0f/s published to RabbitMQ)\t%.0f msg/s (transient)\t%.0f%%\n",
		l.Riders, l.Customers, l.Instances, l.IngestedPerS, l.OfferedPerS, l.PublishedPer, c, 100*l.FractionOfCeiling)
	fmt.Fprintf(tw, "locations: rider → customer\t%s\t\t\n", l.Latency)
	for _, path := range sortedKeys(l.ByPath) {
		fmt.Fprintf(tw, "locations: rider → customer, %s\t%s\t\t\n", path, l.ByPath[path])
	}
	for _, path := range sortedKeys(l.Stages) {
		var parts []string
		for _, st := range []string{"receive", "ingest", "broker", "socket", "total"} {
			if s, ok := l.Stages[path][st]; ok && s.N > 0 {
				parts = append(parts, fmt.Sprintf("%s p50 %.1f p99 %.1f", st, s.P50, s.P99))
			}
		}
		fmt.Fprintf(tw, "locations: where the time goes, %s (ms, histogram bounds)\t%s\t\t\n", path, strings.Join(parts, ", "))
	}
	fmt.Fprintf(tw, "locations: load generator lag behind its schedule\t%s\t\t\n", l.GeneratorLag)
	fmt.Fprintf(tw, "locations: refused / stale / coalesced / rider sockets closed\t%d / %d / %d / %d\t\t\n", l.Refused, l.Stale, l.Coalesced, l.Closed)
	ratio := ""
	if l.CopyCeilingRowsPerS > 0 {
		ratio = fmt.Sprintf("%.0f%%", 100*l.HistoryRowsPerS/l.CopyCeilingRowsPerS)
	}
	fmt.Fprintf(tw, "locations: history (the path travelled): rows written, shed\t%.0f rows/s, %d shed\t%.0f rows/s (COPY)\t%s\n",
		l.HistoryRowsPerS, l.HistoryShed, l.CopyCeilingRowsPerS, ratio)
	fmt.Fprintf(tw, "locations: CPU per 1,000 fixes (ms; %.0f%% of all cores busy)\t%s\t\t\n", 100*l.CoresBusy, withSum(l.CPUMsPer1000))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// trackingStats are the counters of the tracking service's /stats the
// bench reads.
type trackingStats struct {
	Ingest struct {
		Accepted  int64 `json:"accepted"`
		Published int64 `json:"published"`
		Refused   int64 `json:"refused"`
		Limited   int64 `json:"limited"`
		Failed    int64 `json:"failed"`
	} `json:"fixes_in"`
	FixesOut struct {
		Stale     int64 `json:"stale"`
		Coalesced int64 `json:"coalesced"`
	} `json:"fixes_out"`
	Interest struct {
		Live bool `json:"live"`
	} `json:"interest"`
	History struct {
		Written int64 `json:"written"`
		Shed    int64 `json:"shed"`
		Backlog int64 `json:"backlog"`
	} `json:"history"`
}

func readStats(base string) (trackingStats, error) {
	var s trackingStats
	req, _ := http.NewRequest(http.MethodGet, base+"/stats", nil)
	req.Header.Set("Authorization", "Bearer "+benchAdminToken)
	resp, err := httpClient.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// watched is an order with a rider, watched by a customer.
type watched struct{ orderID, riderID, token string }

// watchedOrders places n orders, assigns each a rider of its own, and
// (as an operator) has it accepted and picked up once paid: a customer
// follows its rider only from picked_up on.
func watchedOrders(ctx context.Context, n int) ([]watched, error) {
	out := make([]watched, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32) // under the orders API's in-flight limit
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var o placed
			var code int
			var err error
			for try := 0; try < 20; try++ { // a 503 says retry
				if o, code, err = placeOrder(ctx, fmt.Sprintf("bench-track-%d", i)); err != nil || code != http.StatusServiceUnavailable {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil || code != http.StatusCreated {
				errs <- fmt.Errorf("place: %d %v", code, err)
				return
			}
			rider := riderID(i)
			if err := asOperator(ctx, "/v1/orders/"+o.ID+"/rider", `{"rider_id":"`+rider+`"}`); err != nil {
				errs <- err
				return
			}
			if err := waitPaid(ctx, o.ID); err != nil {
				errs <- err
				return
			}
			for _, status := range []string{"accepted", "picked_up"} {
				if err := asOperator(ctx, "/v1/orders/"+o.ID+"/status", `{"status":"`+status+`"}`); err != nil {
					errs <- err
					return
				}
			}
			out[i] = watched{orderID: o.ID, riderID: rider, token: o.TrackingToken}
		})
	}
	wg.Wait()
	close(errs)
	return out, <-errs
}

// asOperator POSTs body to the orders API's path with the operator's
// token; the answer must be 200.
func asOperator(ctx context.Context, path, body string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d%s", benchPorts.Orders, path), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+benchTokens.ops)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %d", path, resp.StatusCode)
	}
	return nil
}

// waitPaid waits (up to 30 s) until the order is paid.
func waitPaid(ctx context.Context, orderID string) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/v1/orders/%s", benchPorts.Orders, orderID), nil)
		req.Header.Set("Authorization", "Bearer "+benchTokens.ops)
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		var o struct {
			Status string `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&o)
		resp.Body.Close()
		if err == nil && o.Status == "paid" {
			return nil
		}
	}
	return fmt.Errorf("order %s not paid within 30 s", orderID)
}

// startSecondTracking starts another tracking instance from the stack's
// binary, on secondTrackingPort, with the stack's settings.
func (b *bench) startSecondTracking(ctx context.Context) (*stack.Proc, error) {
	first := b.stack.Proc("tracking")
	svc := stack.Service{Name: "tracking", Pkg: "./services/tracking", Addr: fmt.Sprintf("127.0.0.1:%d", secondTrackingPort)}
	logs, err := os.Create(filepath.Join(os.TempDir(), "dabba-bench-tracking-2.log"))
	if err != nil {
		return nil, err
	}
	p := stack.NewProc(svc, filepath.Dir(first.Binary()), stack.Environ(benchEnv), logs)
	if err := p.Start(); err != nil {
		logs.Close()
		return nil, err
	}
	if err := p.WaitReady(ctx); err != nil {
		p.Stop(5 * time.Second)
		logs.Close()
		return nil, err
	}
	return p, nil
}

// customerRead is a fix a customer's socket received: when, and how late.
type customerRead struct {
	path string
	lat  time.Duration
}

// locations runs sz.Riders rider sockets on the stack's tracking instance,
// each sending a fix every sz.FixEvery, each rider on a delivery of its
// own, with sz.Customers customers watching the first riders: half on the
// riders' instance, half on a second instance, which gets their fixes
// through RabbitMQ. It measures the rider → customer latency from the fix's
// own timestamp (both ends are this process, so one clock), where that
// time goes, and the CPU every process spends per 1,000 fixes.
func (b *bench) locations(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if b.r.Ceilings.RabbitTransientPerS == 0 {
		if err := b.transientCeiling(ctx); err != nil {
			return fmt.Errorf("rabbitmq transient: %w", err)
		}
	}
	if err := b.copyCeiling(ctx); err != nil {
		return fmt.Errorf("postgres copy: %w", err)
	}
	second, err := b.startSecondTracking(ctx)
	if err != nil {
		return fmt.Errorf("second tracking instance: %w", err)
	}
	defer second.Stop(10 * time.Second)
	instances := map[string]string{"tracking": trackingURL("http"), "tracking-2": trackingAt("http", secondTrackingPort)}

	began := time.Now()
	orders, err := watchedOrders(ctx, b.sz.Riders)
	if err != nil {
		return err
	}
	fmt.Printf("bench: %d orders with a rider each in %.1f s; waiting for the order pipeline to settle\n", len(orders), time.Since(began).Seconds())
	if err := b.waitSettled(ctx, 10*time.Minute); err != nil {
		return err
	}

	reads := make(chan customerRead, 100_000)
	var measuring atomic.Bool
	for i, o := range orders[:min(b.sz.Customers, len(orders))] {
		port, path := benchPorts.Tracking, "local"
		if i%2 == 1 {
			port, path = secondTrackingPort, "broker"
		}
		c, _, err := websocket.Dial(ctx, trackingAt("ws", port)+"/v1/orders/"+o.orderID+"/track?token="+o.token, nil)
		if err != nil {
			return fmt.Errorf("customer socket: %w", err)
		}
		defer c.CloseNow()
		go func() {
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					return
				}
				now := time.Now()
				var m struct {
					Type string    `json:"type"`
					TS   time.Time `json:"ts"`
				}
				if json.Unmarshal(data, &m) == nil && m.Type == "location" && measuring.Load() {
					reads <- customerRead{path: path, lat: now.Sub(m.TS)}
				}
			}
		}()
	}
	var lat []time.Duration
	byPath := map[string][]time.Duration{}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for r := range reads {
			lat = append(lat, r.lat)
			byPath[r.path] = append(byPath[r.path], r.lat)
		}
	}()

	signer := token.NewSigner([]byte(benchSecret))
	var sent, refused, closed atomic.Int64
	var lagMu sync.Mutex
	var lags []time.Duration
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // dial in parallel, not all at once
	for i := range b.sz.Riders {
		rider := riderID(i)
		tok, err := signer.Rider(rider, time.Hour)
		if err != nil {
			return err
		}
		sem <- struct{}{}
		c, _, err := websocket.Dial(ctx, trackingURL("ws")+"/v1/riders/"+rider+"/ws",
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		<-sem
		if err != nil {
			return fmt.Errorf("rider socket %d: %w", i, err)
		}
		defer c.CloseNow()
		go func() { // error frames: the fix was refused
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
				refused.Add(1)
			}
		}()
		wg.Go(func() { b.ride(ctx, c, &measuring, &sent, &closed, &lagMu, &lags) })
	}
	time.Sleep(3 * time.Second) // every rider under way, the instances' announcements heard
	before, err := statsOf(instances)
	if err != nil {
		return err
	}
	histBefore, err := histogramsOf(instances)
	if err != nil {
		return err
	}
	sentBefore, refusedBefore := sent.Load(), refused.Load()
	cpuBefore := b.cpuTimes()
	cpuBefore["tracking-2"], _ = procCPU(second.Pid())
	measuring.Store(true)
	start := time.Now()
	profiled := b.profileFor(ctx, min(10*time.Second, b.sz.LocationsFor), "-locations")
	time.Sleep(b.sz.LocationsFor)
	measuring.Store(false)
	over := time.Since(start)
	cpuAfter := b.cpuTimes()
	cpuAfter["tracking-2"], _ = procCPU(second.Pid())
	<-profiled
	after, err := statsOf(instances)
	if err != nil {
		return err
	}
	histAfter, err := histogramsOf(instances)
	if err != nil {
		return err
	}
	cancel()
	wg.Wait()
	close(reads)
	<-collected

	l := &b.r.Locations
	window := over.Seconds()
	l.Closed = closed.Load()
	l.Riders, l.Customers, l.Instances = b.sz.Riders, b.sz.Customers, len(instances)
	l.OfferedPerS = float64(sent.Load()-sentBefore) / window
	ingested := float64(after.Ingest.Accepted - before.Ingest.Accepted)
	l.IngestedPerS = ingested / window
	l.PublishedPer = float64(after.Ingest.Published-before.Ingest.Published) / window
	l.Refused = refused.Load() - refusedBefore
	l.Stale = after.FixesOut.Stale - before.FixesOut.Stale
	l.Coalesced = after.FixesOut.Coalesced - before.FixesOut.Coalesced
	l.Latency = summarize(lat)
	l.ByPath = map[string]Lat{}
	for path, d := range byPath {
		l.ByPath[path] = summarize(d)
	}
	l.Stages = stagesBetween(histBefore, histAfter)
	l.HistoryRowsPerS = float64(after.History.Written-before.History.Written) / window
	l.HistoryShed = after.History.Shed - before.History.Shed
	lagMu.Lock()
	l.GeneratorLag = summarize(lags)
	lagMu.Unlock()
	if c := b.r.Ceilings.RabbitTransientPerS; c > 0 {
		l.FractionOfCeiling = l.IngestedPerS / c
	}
	if ingested > 0 {
		perFix, busy := cpuPerOrder(cpuBefore, cpuAfter, int(ingested), over, b.r.Cores)
		l.CPUMsPer1000, l.CoresBusy = map[string]float64{}, busy
		for name, ms := range perFix {
			l.CPUMsPer1000[name] = 1000 * ms
		}
	}
	return nil
}

// ride sends a rider's fixes, one every sz.FixEvery from a random moment
// on, as real riders do, until ctx is done. A fix carries the time it is
// sent; while measuring, how late that is after its scheduled time goes
// into lags.
func (b *bench) ride(ctx context.Context, c *websocket.Conn, measuring *atomic.Bool, sent, closed *atomic.Int64, lagMu *sync.Mutex, lags *[]time.Duration) {
	next := time.Now().Add(rand.N(b.sz.FixEvery))
	buf := make([]byte, 0, 256)
	var mine []time.Duration
	defer func() {
		lagMu.Lock()
		*lags = append(*lags, mine...)
		lagMu.Unlock()
	}()
	for seq := int64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		now := time.Now()
		if measuring.Load() {
			mine = append(mine, now.Sub(next))
		}
		next = next.Add(b.sz.FixEvery)
		// Moving north about 11 m a fix, from a start of its own.
		buf = append(buf[:0], `{"lat":`...)
		buf = strconv.AppendFloat(buf, 19.0+float64(seq%1000)/10_000, 'f', 6, 64)
		buf = append(buf, `,"lng":72.84,"heading":0,"speed_kmh":20,"seq":`...)
		buf = strconv.AppendInt(buf, seq, 10)
		buf = append(buf, `,"ts":"`...)
		buf = now.UTC().AppendFormat(buf, time.RFC3339Nano)
		buf = append(buf, `"}`...)
		// No deadline of its own: a stuck write shows as latency, and
		// the run's end (ctx) closes the socket.
		if err := c.Write(context.Background(), websocket.MessageText, buf); err != nil {
			if ctx.Err() == nil {
				closed.Add(1)
			}
			return
		}
		sent.Add(1)
	}
}

// statsOf sums the /stats counters of the tracking instances.
func statsOf(instances map[string]string) (trackingStats, error) {
	var sum trackingStats
	for _, base := range instances {
		s, err := readStats(base)
		if err != nil {
			return sum, err
		}
		sum.Ingest.Accepted += s.Ingest.Accepted
		sum.Ingest.Published += s.Ingest.Published
		sum.Ingest.Refused += s.Ingest.Refused
		sum.Ingest.Limited += s.Ingest.Limited
		sum.Ingest.Failed += s.Ingest.Failed
		sum.FixesOut.Stale += s.FixesOut.Stale
		sum.FixesOut.Coalesced += s.FixesOut.Coalesced
		sum.History.Written += s.History.Written
		sum.History.Shed += s.History.Shed
		sum.History.Backlog += s.History.Backlog
	}
	return sum, nil
}

// histogram is the cumulative bucket counts of one series of
// dabba_tracking_fix_seconds, by upper bound.
type histogram map[float64]float64

// bucketLine matches a bucket of the fix histogram in Prometheus' text
// format.
var bucketLine = regexp.MustCompile(`^dabba_tracking_fix_seconds_bucket\{path="(\w+)",stage="(\w+)",le="([^"]+)"\} (\S+)$`)

// histogramsOf scrapes the instances' fix histograms and adds them up, by
// path and stage.
func histogramsOf(instances map[string]string) (map[string]map[string]histogram, error) {
	out := map[string]map[string]histogram{}
	for _, base := range instances {
		resp, err := httpClient.Get(base + "/metrics")
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			m := bucketLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			le, err1 := strconv.ParseFloat(m[3], 64)
			n, err2 := strconv.ParseFloat(m[4], 64)
			if err1 != nil || err2 != nil {
				continue
			}
			if out[m[1]] == nil {
				out[m[1]] = map[string]histogram{}
			}
			if out[m[1]][m[2]] == nil {
				out[m[1]][m[2]] = histogram{}
			}
			out[m[1]][m[2]][le] += n
		}
		resp.Body.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// stagesBetween summarises what each stage's histogram gained between two
// scrapes.
func stagesBetween(before, after map[string]map[string]histogram) map[string]map[string]StageLat {
	out := map[string]map[string]StageLat{}
	for path, stages := range after {
		for stage, h := range stages {
			delta := histogram{}
			for le, n := range h {
				delta[le] = n - before[path][stage][le]
			}
			if s := delta.summary(); s.N > 0 {
				if out[path] == nil {
					out[path] = map[string]StageLat{}
				}
				out[path][stage] = s
			}
		}
	}
	return out
}

// summary reads the median and the 99th percentile off cumulative buckets:
// each is the upper bound of the bucket it falls in.
func (h histogram) summary() StageLat {
	bounds := make([]float64, 0, len(h))
	for le := range h {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return StageLat{}
	}
	total := h[bounds[len(bounds)-1]] // +Inf
	at := func(q float64) float64 {
		for _, le := range bounds {
			if h[le] >= q*total {
				if math.IsInf(le, 1) {
					return math.Inf(1)
				}
				return le * 1000
			}
		}
		return math.NaN()
	}
	return StageLat{N: int64(total), P50: at(0.5), P99: at(0.99)}
}

// memory opens sz.IdleSockets idle customer sockets and divides the
// tracking process's growth in resident memory by their number.
func (b *bench) memory(ctx context.Context) error {
	orders, err := watchedOrders(ctx, 1)
	if err != nil {
		return err
	}
	pid := b.stack.Proc("tracking").Pid()
	time.Sleep(2 * time.Second) // let the stack settle after start
	before, err := procKiB(pid, "VmRSS")
	if err != nil {
		return err
	}
	url := trackingURL("ws") + "/v1/orders/" + orders[0].orderID + "/track?token=" + orders[0].token
	var conns []*websocket.Conn
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	for range b.sz.IdleSockets {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			return fmt.Errorf("idle socket %d: %w", len(conns), err)
		}
		go func() { // take the status it is sent, answer pings
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
			}
		}()
		conns = append(conns, c)
	}
	time.Sleep(2 * time.Second) // let the service settle
	after, err := procKiB(pid, "VmRSS")
	if err != nil {
		return err
	}
	b.r.Memory.IdleSockets = len(conns)
	b.r.Memory.BytesPerIdleSocket = float64(after-before) * 1024 / float64(len(conns))
	runtime.KeepAlive(conns)
	return nil
}

// peakRSS records each service's peak resident memory over the run. It
// is read before the stack restarts as well as at the end, and keeps the
// highest: a process's peak goes with it.
func (b *bench) peakRSS() {
	if b.r.Memory.PeakRSSKiB == nil {
		b.r.Memory.PeakRSSKiB = map[string]int64{}
	}
	for _, p := range b.stack.Procs {
		if kib, err := procKiB(p.Pid(), "VmHWM"); err == nil {
			b.r.Memory.PeakRSSKiB[p.Name] = max(b.r.Memory.PeakRSSKiB[p.Name], kib)
		}
	}
}

// procKiB reads a "VmX: n kB" line of /proc/<pid>/status.
func procKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
