package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/outbox"
	"github.com/dabba/dabba/shared/token"
)

// httpClient keeps enough idle connections that an open-loop load never
// waits for one.
var httpClient = &http.Client{Timeout: 30 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute}}

// loadResult is what an open-loop run saw.
type loadResult struct {
	latency  []time.Duration
	ids      []string
	refused  int      // 503 with Retry-After
	noAnswer int      // no answer at all (the client gave up): the order may or may not be stored
	errors   []string // answers outside the API's contract
	duration time.Duration
}

// openLoop places n orders at rate a second, each sent at its scheduled
// time whether or not earlier ones have been answered, and measures each
// answer from that scheduled time, so a stall shows up as latency rather
// than as a slower arrival rate (coordinated omission).
func openLoop(ctx context.Context, tag string, rate, n int) loadResult {
	interval := time.Second / time.Duration(rate)
	var mu sync.Mutex
	var r loadResult
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Go(func() {
			o, code, err := placeOrder(ctx, fmt.Sprintf("bench-%s-%d", tag, i))
			took := time.Since(due)
			mu.Lock()
			defer mu.Unlock()
			r.latency = append(r.latency, took)
			switch {
			case err != nil:
				r.noAnswer++
			case code == http.StatusCreated:
				r.ids = append(r.ids, o.ID)
			case code == http.StatusServiceUnavailable:
				r.refused++
			default:
				r.errors = append(r.errors, fmt.Sprintf("POST /v1/orders = %d", code))
			}
		})
	}
	wg.Wait()
	r.duration = time.Since(start)
	return r
}

// ordersFor is how many orders rate a second places over d.
func ordersFor(rate int, d time.Duration) int { return int(float64(rate) * d.Seconds()) }

// benchTokens are the bench's tokens, minted once, so a request costs the
// load generator no signing: an operator's places every order (for the
// customer its body names) and assigns the riders.
var benchTokens = func() (t struct{ ops string }) {
	var err error
	if t.ops, err = token.NewSigner([]byte(benchSecret)).Mint(token.AudienceOps, "bench", 24*time.Hour); err != nil {
		panic(err) // a constant secret and a valid subject: cannot happen
	}
	return t
}()

// seedMenu gives the bench's restaurant the menu its orders are priced
// from: one dish, so pricing an order costs one primary-key look-up.
func seedMenu(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://127.0.0.1:%d/v1/restaurants/bench-kitchen/menu", benchPorts.Orders),
		strings.NewReader(`{"items":[{"sku":"thali","name":"Veg thali","price_cents":25000,"available":true}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+benchTokens.ops)
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("seed the menu: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("seed the menu: %d %s", resp.StatusCode, b)
	}
	return nil
}

// placeOrder places an order and returns its id and tracking token.
func placeOrder(ctx context.Context, customer string) (placed, int, error) {
	body := fmt.Sprintf(`{"customer_id":%q,"restaurant_id":"bench-kitchen","email":"bench@example.com",
		"items":[{"sku":"thali","quantity":1,"unit_price_cents":25000}],
		"delivery_address":{"line1":"Dadar West","lat":19.02,"lng":72.84}}`, customer)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v1/orders", benchPorts.Orders), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", uuid.NewString())
	req.Header.Set("Authorization", "Bearer "+benchTokens.ops)
	resp, err := httpClient.Do(req)
	if err != nil {
		return placed{}, 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var o placed
	_ = json.Unmarshal(b, &o)
	return o, resp.StatusCode, nil
}

// placed is what the bench reads of a placed order.
type placed struct {
	ID            string `json:"id"`
	TrackingToken string `json:"tracking_token"`
}

// workQueues are the queues an order's events travel through.
var workQueues = []string{broker.QueuePayment, broker.QueueRestaurant, broker.QueueEmail, broker.QueueAnalytics}

// backlog returns the messages waiting in the work queues and the outbox
// rows not yet published.
func (b *bench) backlog(ctx context.Context) (queued, unsent int, err error) {
	conn, err := amqp.Dial(b.amqpURL)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, 0, err
	}
	for _, q := range workQueues {
		info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return 0, 0, err
		}
		queued += info.Messages
	}
	n, _, err := outbox.Backlog(ctx, b.db)
	return queued, int(n), err
}

// waitDrained waits until nothing is queued or unsent, or until within.
func (b *bench) waitDrained(ctx context.Context, within time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		q, u, err := b.backlog(ctx)
		if err != nil {
			return 0, err
		}
		if q == 0 && u == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > within {
			return time.Since(start), fmt.Errorf("still %d queued and %d unsent after %v", q, u, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitSettled waits until the backlog is empty and still empty sz.Settle
// later, or until within. It comes before a window whose CPU is measured:
// waitDrained sees ready messages and unsent rows, not the messages
// consumers hold unacknowledged (up to their prefetch; analytics batches
// for up to a second), whose work would otherwise be charged to the next
// window.
func (b *bench) waitSettled(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if _, err := b.waitDrained(ctx, time.Until(deadline)); err != nil {
			return err
		}
		time.Sleep(b.sz.Settle)
		q, u, err := b.backlog(ctx)
		if err != nil {
			return err
		}
		if q == 0 && u == 0 {
			return nil
		}
	}
}

// window is an open-loop run with the CPU each part used during it and
// the largest backlog seen.
type window struct {
	res        loadResult
	before     map[string]time.Duration
	after      map[string]time.Duration
	maxQ, maxU int
}

// ordersPerS is the rate the window's orders were accepted at.
func (w window) ordersPerS() float64 { return float64(len(w.res.ids)) / w.res.duration.Seconds() }

// cpuPerS is each part's CPU in milliseconds per second of the window.
func (w window) cpuPerS() map[string]float64 { return cpuPerSecond(w.before, w.after, w.res.duration) }

// measuredLoop is openLoop with cpuTimes read on either side and the
// backlog sampled every second. Every measured window samples alike, so
// the sampler's own cost (a connection a second) is the same per second
// in each and drops out of the marginal CPU. At rate 0 it places no order
// and measures the stack at rest for d.
func (b *bench) measuredLoop(ctx context.Context, tag string, rate int, d time.Duration) window {
	var w window
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Second):
			}
			if q, u, err := b.backlog(ctx); err == nil {
				w.maxQ, w.maxU = max(w.maxQ, q), max(w.maxU, u)
			}
		}
	}()
	w.before = b.cpuTimes()
	if rate > 0 {
		w.res = openLoop(ctx, tag, rate, ordersFor(rate, d))
	} else {
		start := time.Now()
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		w.res.duration = time.Since(start)
	}
	w.after = b.cpuTimes()
	close(stopSampling)
	<-sampled
	return w
}

// orders finds the highest rate that passes a probe (p99 ≤ 50 ms, no
// errors, the queues and outbox not building up), holds it, then holds a
// lower rate for the marginal CPU per order.
func (b *bench) orders(ctx context.Context) error {
	best, err := b.search(ctx)
	if err != nil {
		return err
	}
	o := &b.r.Orders
	o.Rate = best
	if best == 0 {
		// Nothing met the target: still hold the lowest rate, for the
		// end-to-end figures, and say so.
		best = b.sz.Rates[0]
		o.LimitedBy += fmt.Sprintf(" (no rate met the target; held %d/s anyway)", best)
	}
	// The last probe may have failed with a backlog: it must not be
	// charged to the hold.
	if err := b.waitSettled(ctx, 10*time.Minute); err != nil {
		return err
	}
	high, err := b.hold(ctx, best)
	if err != nil {
		return err
	}
	if err := b.waitSettled(ctx, 10*time.Minute); err != nil {
		return err
	}
	return b.marginal(ctx, best, high)
}

// search probes each rate in turn and returns the highest that passed
// before the first that did not.
func (b *bench) search(ctx context.Context) (int, error) {
	best := 0
	for _, rate := range b.sz.Rates {
		// Sample the backlog while the probe runs: a backlog that keeps
		// growing means some consumer does not keep up.
		var maxQ, maxU int
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(b.sz.Probe / 2)
			maxQ, maxU, _ = b.backlog(ctx)
		}()
		res := openLoop(ctx, fmt.Sprintf("probe%d", rate), rate, ordersFor(rate, b.sz.Probe))
		<-done
		q, u, err := b.backlog(ctx)
		if err != nil {
			return 0, err
		}
		p := Probe{Rate: rate, Latency: summarize(res.latency), Errors: len(res.errors) + res.refused + res.noAnswer, Backlog: q, Unsent: u, Accepted: len(res.ids)}
		// Flat: the end of the probe holds no more than about a second's
		// worth of events (an order makes nine messages across these
		// queues), or no more than the middle of the probe did.
		limit := 9 * rate
		switch {
		case p.Errors > 0:
			p.Why = fmt.Sprintf("%d errors", p.Errors)
		case p.Latency.P99 > 50:
			p.Why = fmt.Sprintf("p99 %.1f ms", p.Latency.P99)
		case q > limit && q > maxQ:
			p.Why = fmt.Sprintf("queues growing (%d → %d messages)", maxQ, q)
		case u > rate && u > maxU:
			p.Why = fmt.Sprintf("outbox growing (%d → %d unsent)", maxU, u)
		default:
			p.Passed = true
		}
		b.r.Probes = append(b.r.Probes, p)
		fmt.Printf("bench: orders at %d/s: %s, errors %d, backlog %d, unsent %d: %v %s\n", rate, p.Latency, p.Errors, q, u, p.Passed, p.Why)
		if _, err := b.waitDrained(ctx, 10*time.Minute); err != nil {
			return 0, err
		}
		if !p.Passed {
			b.r.Orders.LimitedBy = fmt.Sprintf("%d/s: %s", rate, p.Why)
			break
		}
		best = rate
	}
	if b.r.Orders.LimitedBy == "" {
		b.r.Orders.LimitedBy = "nothing: every rate tried passed"
	}
	return best, nil
}

// hold holds rate for sz.Hold and waits for every order's effects.
func (b *bench) hold(ctx context.Context, rate int) (window, error) {
	o := &b.r.Orders
	profiled := b.profile(ctx)
	defer func() { <-profiled }()
	w := b.measuredLoop(ctx, "hold", rate, b.sz.Hold)
	res := w.res
	end := time.Now()
	o.CPUMsPerOrder, o.CoresBusy = cpuPerOrder(w.before, w.after, len(res.ids), res.duration, b.r.Cores)
	o.Seconds, o.Accepted, o.Errors = res.duration.Seconds(), len(res.ids), len(res.errors)+res.refused+res.noAnswer
	o.Latency, o.MaxQueueBacklog, o.MaxOutboxUnsent = summarize(res.latency), w.maxQ, w.maxU
	if pg := b.r.Ceilings.PostgresOrderTxPerS; pg > 0 {
		o.FractionOfPG = float64(o.Rate) / pg
	}
	if err := b.waitEffects(ctx, res.ids, 10*time.Minute); err != nil {
		b.r.Lost = append(b.r.Lost, "hold: "+err.Error())
	}
	o.AllDoneAfterS = time.Since(end).Seconds()
	o.AllDoneWithin5s = o.AllDoneAfterS <= 5
	e2e, err := b.sinceCreated(ctx, endToEndQuery, res.ids)
	if err != nil {
		return w, err
	}
	o.EndToEnd = summarize(e2e)
	paid, err := b.sinceCreated(ctx, paidQuery, res.ids)
	if err != nil {
		return w, err
	}
	o.PostToPaid = summarize(paid)
	return w, nil
}

// marginal holds a quarter of the held rate (at least 10/s) for sz.Low and
// takes the slope of each part's CPU between the two windows. Both start
// from a settled stack and are measured the same way, over the time their
// orders were sent.
func (b *bench) marginal(ctx context.Context, rate int, high window) error {
	m := &b.r.Orders.Marginal
	m.LowRate = max(rate/4, 10)
	if m.LowRate >= rate {
		m.LowRate, m.Skipped = 0, fmt.Sprintf("the held rate %d/s leaves no lower rate of at least 10/s", rate)
		return nil
	}
	low := b.measuredLoop(ctx, "low", m.LowRate, b.sz.Low)
	m.LowSeconds, m.LowErrors = low.res.duration.Seconds(), len(low.res.errors)+low.res.refused+low.res.noAnswer
	// The accepted rates, not the offered ones: a refused request costs
	// far less than an order, and the slope is per order.
	m.HighOrdersPerS, m.LowOrdersPerS = high.ordersPerS(), low.ordersPerS()
	m.HighCPUMsPerS, m.LowCPUMsPerS = high.cpuPerS(), low.cpuPerS()
	if m.HighOrdersPerS <= m.LowOrdersPerS {
		m.Skipped = fmt.Sprintf("the hold accepted %.1f orders/s, not more than the low rate's %.1f", m.HighOrdersPerS, m.LowOrdersPerS)
	} else {
		m.MsPerOrder, m.MsPerOrderSum = marginalCPU(m.HighCPUMsPerS, m.LowCPUMsPerS, m.HighOrdersPerS, m.LowOrdersPerS)
	}
	fmt.Printf("bench: orders at %d/s for the marginal CPU: %d accepted, %d errors\n", m.LowRate, len(low.res.ids), m.LowErrors)
	if err := b.waitEffects(ctx, low.res.ids, 10*time.Minute); err != nil {
		b.r.Lost = append(b.r.Lost, "low rate: "+err.Error())
	}
	_, err := b.waitDrained(ctx, 10*time.Minute)
	return err
}

// effectsQuery counts, for a set of orders, those paid and those with each
// consumer's effect of order.placed.
const effectsQuery = `
	WITH o AS (SELECT id, status FROM orders WHERE id = ANY($1::uuid[]))
	SELECT (SELECT count(*) FROM o),
	  (SELECT count(*) FROM o WHERE status = 'paid'),
	  (SELECT count(*) FROM payments WHERE order_id IN (SELECT id FROM o)),
	  (SELECT count(*) FROM restaurant_notifications WHERE event_type = 'order.placed' AND order_id IN (SELECT id FROM o)),
	  (SELECT count(*) FROM emails_sent WHERE kind = 'order.placed' AND order_id IN (SELECT id FROM o)),
	  (SELECT count(*) FROM analytics_events WHERE event_type = 'order.placed' AND order_id IN (SELECT id FROM o))`

// waitEffects waits until every order is stored, paid, and has each of the
// four consumers' effects exactly once; past within, what is missing is
// reported as lost.
func (b *bench) waitEffects(ctx context.Context, ids []string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var stored, paid, payments, notified, emailed, recorded int
		if err := b.db.QueryRow(ctx, effectsQuery, ids).Scan(&stored, &paid, &payments, &notified, &emailed, &recorded); err != nil {
			return err
		}
		n := len(ids)
		if stored == n && paid == n && payments == n && notified == n && emailed == n && recorded == n {
			return nil
		}
		if stored > n || payments > n || notified > n || emailed > n || recorded > n || time.Now().After(deadline) {
			return fmt.Errorf("of %d orders: %d stored, %d paid, %d payments, %d notified, %d e-mailed, %d recorded",
				n, stored, paid, payments, notified, emailed, recorded)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// endToEndQuery is, per order, the time from its creation to the last of
// the four consumers' committed effects.
const endToEndQuery = `
	SELECT greatest(p.created_at, n.created_at, e.sent_at, a.received_at) - o.created_at
	FROM orders o
	JOIN payments p ON p.order_id = o.id
	JOIN restaurant_notifications n ON n.order_id = o.id AND n.event_type = 'order.placed'
	JOIN emails_sent e ON e.order_id = o.id AND e.kind = 'order.placed'
	JOIN analytics_events a ON a.order_id = o.id AND a.event_type = 'order.placed'
	WHERE o.id = ANY($1::uuid[])`

// paidQuery is, per order, the time from its creation to its paid entry
// in the history, which carries the time the payment service committed
// the charge (order.paid's occurred_at), not when the orders service
// applied it.
const paidQuery = `
	SELECT h.at - o.created_at
	FROM orders o
	JOIN order_status_history h ON h.order_id = o.id AND h.status = 'paid'
	WHERE o.id = ANY($1::uuid[])`

// sinceCreated runs a query of one interval per order over ids.
func (b *bench) sinceCreated(ctx context.Context, query string, ids []string) ([]time.Duration, error) {
	rows, err := b.db.Query(ctx, query, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []time.Duration
	for rows.Next() {
		var d time.Duration
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// burst sends sz.Burst orders over sz.BurstOver, far above what the
// consumers take: the API must keep answering, the queues absorb the
// backlog, and every accepted order must get its effects. Each order is
// tried once: what the API accepts on a first try is the figure, the
// refused ones a client would retry later with the same key.
func (b *bench) burst(ctx context.Context) error {
	lost := len(b.r.Lost)
	// Rounded, so 100,000 over a minute is the 1,667/s, and
	// exactly sz.Burst orders are sent.
	rate := int(math.Round(float64(b.sz.Burst) / b.sz.BurstOver.Seconds()))
	res := openLoop(ctx, "burst", rate, b.sz.Burst)
	end := time.Now()
	bu := &b.r.Burst
	bu.Orders, bu.Rate, bu.OverS, bu.Accepted, bu.Refused = b.sz.Burst, rate, res.duration.Seconds(), len(res.ids), res.refused
	if sent := len(res.latency); sent > 0 {
		bu.AcceptedFirstTryPct = 100 * float64(bu.Accepted) / float64(sent)
	}
	bu.Latency = summarize(res.latency)
	bu.EmailAtDefaultLimit = float64(len(res.ids)) / 25 / 60
	bu.NoAnswer = res.noAnswer
	if len(res.errors) > 0 {
		b.r.Lost = append(b.r.Lost, fmt.Sprintf("burst: %d unexpected answers, e.g. %s", len(res.errors), res.errors[0]))
	}
	fmt.Printf("bench: burst of %d at %d/s sent: %d accepted on first try (%.1f%%), %d refused, %d unanswered, %s; draining\n",
		b.sz.Burst, rate, len(res.ids), bu.AcceptedFirstTryPct, res.refused, res.noAnswer, bu.Latency)
	if err := b.waitEffects(ctx, res.ids, 20*time.Minute); err != nil {
		b.r.Lost = append(b.r.Lost, "burst: "+err.Error())
	}
	bu.DrainS = time.Since(end).Seconds()
	// Every accepted order is stored; an unanswered request may have been
	// stored too (its client would retry with the same key), never more.
	var stored int
	if err := b.db.QueryRow(ctx, "SELECT count(*) FROM orders WHERE customer_id LIKE 'bench-burst-%' AND created_at >= $1",
		end.Add(-time.Duration(bu.OverS*float64(time.Second))-time.Second)).Scan(&stored); err != nil {
		return err
	}
	if stored < bu.Accepted || stored > bu.Accepted+bu.NoAnswer {
		b.r.Lost = append(b.r.Lost, fmt.Sprintf("burst: %d orders stored for %d accepted and %d unanswered", stored, bu.Accepted, bu.NoAnswer))
	}
	bu.NoneLost = len(b.r.Lost) == lost
	_, err := b.waitDrained(ctx, 10*time.Minute)
	return err
}
