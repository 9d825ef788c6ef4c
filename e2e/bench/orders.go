package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
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

// openLoop places rate orders a second for d, each sent at its scheduled
// time whether or not earlier ones have been answered, and measures each
// answer from that scheduled time, so a stall shows up as latency rather
// than as a slower arrival rate (coordinated omission).
func openLoop(ctx context.Context, tag string, rate int, d time.Duration) loadResult {
	n := int(float64(rate) * d.Seconds())
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

// placeOrder places an order and returns its id and tracking token.
func placeOrder(ctx context.Context, customer string) (placed, int, error) {
	body := fmt.Sprintf(`{"customer_id":%q,"restaurant_id":"bench-kitchen","email":"bench@example.com",
		"items":[{"sku":"thali","name":"Veg thali","quantity":1,"unit_price_cents":25000}],
		"delivery_address":{"line1":"Dadar West","lat":19.02,"lng":72.84}}`, customer)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v1/orders", benchPorts.Orders), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", uuid.NewString())
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
var workQueues = []string{broker.QueuePayment, broker.QueueRestaurant, broker.QueueEmail, broker.QueueAnalytics, broker.QueueOrderStatus}

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
	err = b.db.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE sent_at IS NULL").Scan(&unsent)
	return queued, unsent, err
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

// orders finds the highest rate that passes a probe (p99 ≤ 50 ms, no
// errors, the queues and outbox not building up), then holds it.
func (b *bench) orders(ctx context.Context) error {
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
		res := openLoop(ctx, fmt.Sprintf("probe%d", rate), rate, b.sz.Probe)
		<-done
		q, u, err := b.backlog(ctx)
		if err != nil {
			return err
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
			return err
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
	o := &b.r.Orders
	o.Rate = best
	if best == 0 {
		// Nothing met the target: still hold the lowest rate, for the
		// end-to-end figures, and say so.
		best = b.sz.Rates[0]
		o.LimitedBy += fmt.Sprintf(" (no rate met the target; held %d/s anyway)", best)
	}
	var maxQ, maxU int
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
				maxQ, maxU = max(maxQ, q), max(maxU, u)
			}
		}
	}()
	cpuBefore := b.cpuTimes()
	res := openLoop(ctx, "hold", best, b.sz.Hold)
	o.CPUMsPerOrder, o.CoresBusy = cpuPerOrder(cpuBefore, b.cpuTimes(), len(res.ids), res.duration, b.r.Cores)
	close(stopSampling)
	<-sampled
	end := time.Now()
	o.Seconds, o.Accepted, o.Errors = res.duration.Seconds(), len(res.ids), len(res.errors)+res.refused+res.noAnswer
	o.Latency, o.MaxQueueBacklog, o.MaxOutboxUnsent = summarize(res.latency), maxQ, maxU
	if pg := b.r.Ceilings.PostgresOrderTxPerS; pg > 0 {
		o.FractionOfPG = float64(o.Rate) / pg
	}
	if err := b.waitEffects(ctx, res.ids, 10*time.Minute); err != nil {
		b.r.Lost = append(b.r.Lost, "hold: "+err.Error())
	}
	o.AllDoneAfterS = time.Since(end).Seconds()
	o.AllDoneWithin5s = o.AllDoneAfterS <= 5
	e2e, err := b.endToEnd(ctx, res.ids)
	if err != nil {
		return err
	}
	o.EndToEnd = summarize(e2e)
	_, err = b.waitDrained(ctx, 10*time.Minute)
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

// endToEnd is, per order, the time from its creation to the last of the
// four consumers' committed effects.
func (b *bench) endToEnd(ctx context.Context, ids []string) ([]time.Duration, error) {
	rows, err := b.db.Query(ctx, `
		SELECT greatest(p.created_at, n.created_at, e.sent_at, a.received_at) - o.created_at
		FROM orders o
		JOIN payments p ON p.order_id = o.id
		JOIN restaurant_notifications n ON n.order_id = o.id AND n.event_type = 'order.placed'
		JOIN emails_sent e ON e.order_id = o.id AND e.kind = 'order.placed'
		JOIN analytics_events a ON a.order_id = o.id AND a.event_type = 'order.placed'
		WHERE o.id = ANY($1::uuid[])`, ids)
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
// backlog, and every accepted order must get its effects.
func (b *bench) burst(ctx context.Context) error {
	rate := int(float64(b.sz.Burst) / b.sz.BurstOver.Seconds())
	res := openLoop(ctx, "burst", rate, b.sz.BurstOver)
	end := time.Now()
	bu := &b.r.Burst
	bu.Orders, bu.OverS, bu.Accepted, bu.Refused = b.sz.Burst, res.duration.Seconds(), len(res.ids), res.refused
	bu.Latency = summarize(res.latency)
	bu.EmailAtDefaultLimit = float64(len(res.ids)) / 25 / 60
	bu.NoAnswer = res.noAnswer
	if len(res.errors) > 0 {
		b.r.Lost = append(b.r.Lost, fmt.Sprintf("burst: %d unexpected answers, e.g. %s", len(res.errors), res.errors[0]))
	}
	fmt.Printf("bench: burst sent: %d accepted, %d refused, %s; draining\n", len(res.ids), res.refused, bu.Latency)
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
	_, err := b.waitDrained(ctx, 10*time.Minute)
	return err
}
