package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/dabba/dabba/shared/token"
)

// runRiders names this run's riders apart from earlier runs': tracking
// remembers each rider's latest seq, and a fix not newer than it is stale.
var runRiders = fmt.Sprintf("bench-%d", time.Now().Unix())

func riderID(i int) string { return fmt.Sprintf("%s-rider-%d", runRiders, i) }

func trackingURL(scheme string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, benchPorts.Tracking)
}

// trackingStats are the counters of the tracking service's /stats the
// bench reads.
type trackingStats struct {
	Ingest struct {
		Published int64 `json:"published"`
		Refused   int64 `json:"refused"`
		Limited   int64 `json:"limited"`
		Failed    int64 `json:"failed"`
	} `json:"fixes_in"`
	FixesOut struct {
		Stale     int64 `json:"stale"`
		Coalesced int64 `json:"coalesced"`
	} `json:"fixes_out"`
}

func readStats() (trackingStats, error) {
	var s trackingStats
	req, _ := http.NewRequest(http.MethodGet, trackingURL("http")+"/stats", nil)
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
	sem := make(chan struct{}, 20)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			o, code, err := placeOrder(ctx, fmt.Sprintf("bench-track-%d", i))
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

// locations runs sz.Riders rider sockets, each sending a fix every
// sz.FixEvery, with customers watching the first sz.Customers riders, and
// measures the rider → customer latency from the fix's own timestamp (both
// ends are this process, so one clock).
func (b *bench) locations(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	orders, err := watchedOrders(ctx, b.sz.Customers)
	if err != nil {
		return err
	}
	for _, o := range orders {
		if o.token == "" {
			return fmt.Errorf("order %s: no tracking token", o.orderID)
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	var measuring atomic.Bool
	for _, o := range orders {
		c, _, err := websocket.Dial(ctx, trackingURL("ws")+"/v1/orders/"+o.orderID+"/track?token="+o.token, nil)
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
					mu.Lock()
					lat = append(lat, now.Sub(m.TS))
					mu.Unlock()
				}
			}
		}()
	}
	signer := token.NewSigner([]byte(benchSecret))
	var sent, refused atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // dial in parallel, not all at once
	var closed atomic.Int64
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
		wg.Go(func() {
			// Each rider starts at a random moment of the interval, as
			// real riders do, rather than all at once.
			time.Sleep(rand.N(b.sz.FixEvery))
			tick := time.NewTicker(b.sz.FixEvery)
			defer tick.Stop()
			for seq := int64(1); ; seq++ {
				fix := `{"lat":19.0` + strconv.FormatInt(seq%1000, 10) + `,"lng":72.84,"heading":90,"speed_kmh":20,"seq":` +
					strconv.FormatInt(seq, 10) + `,"ts":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}`
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := c.Write(wctx, websocket.MessageText, []byte(fix))
				wcancel()
				if err != nil {
					if ctx.Err() == nil {
						closed.Add(1)
					}
					return
				}
				sent.Add(1)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	time.Sleep(3 * time.Second) // every rider under way
	before, err := readStats()
	if err != nil {
		return err
	}
	sentBefore, refusedBefore := sent.Load(), refused.Load()
	measuring.Store(true)
	start := time.Now()
	time.Sleep(b.sz.LocationsFor)
	measuring.Store(false)
	window := time.Since(start).Seconds()
	after, err := readStats()
	if err != nil {
		return err
	}
	cancel()
	wg.Wait()
	l := &b.r.Locations
	l.Closed = closed.Load()
	l.Riders, l.Customers = b.sz.Riders, b.sz.Customers
	l.OfferedPerS = float64(sent.Load()-sentBefore) / window
	l.IngestedPerS = float64(after.Ingest.Published-before.Ingest.Published) / window
	l.Refused = refused.Load() - refusedBefore
	l.Stale = after.FixesOut.Stale - before.FixesOut.Stale
	l.Coalesced = after.FixesOut.Coalesced - before.FixesOut.Coalesced
	mu.Lock()
	l.Latency = summarize(lat)
	mu.Unlock()
	if c := b.r.Ceilings.RabbitTransientPerS; c > 0 {
		l.FractionOfCeiling = l.IngestedPerS / c
	}
	return nil
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

// peakRSS records each service's peak resident memory over the run.
func (b *bench) peakRSS() {
	b.r.Memory.PeakRSSKiB = map[string]int64{}
	for _, p := range b.stack.Procs {
		if kib, err := procKiB(p.Pid(), "VmHWM"); err == nil {
			b.r.Memory.PeakRSSKiB[p.Name] = kib
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
