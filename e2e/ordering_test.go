package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/testenv"
	"github.com/dabba/dabba/shared/token"
)

// Per-order ordering (shared/consumer/order.go), end to end. Each test
// hands an ordered consumer an order's events out of their order, or has
// one of them fail while a later one could go, and checks that the effects
// come out in the order the events were written all the same. Each says
// how it forces that: without the feature (the outbox not numbering the
// events, as with dabba.ordering off) each of them fails.

// TestOrderingEmailRetriedPlacedBeforePaid: the mail server refuses an
// order's first mail for now (451), and the order's order.placed and
// order.paid reach the e-mail consumer in one batch. order.placed fails
// and waits to be tried again; order.paid must wait behind it (held), so
// the customer reads "placed" before "paid".
//
// How it forces the reordering: the e-mail service is stopped (SIGSTOP)
// while the order is placed and paid, so that both events wait in its
// prefetch and make one batch once it runs again. The consumer would
// otherwise see order.placed alone, and while a 4xx keeps it holding that
// message it takes no new work, which keeps the order without any help.
// In one batch, without ordering, order.paid would be mailed at once
// (its send is the address's second, which the sink accepts) and
// order.placed half a second later, on its retry.
func TestOrderingEmailRetriedPlacedBeforePaid(t *testing.T) {
	db := mustDB(t)
	to := "refuse-first-451@" + uuid.NewString()[:8] + ".example"
	body := orderJSONTo("c-ord-retry-"+uuid.NewString(), "r-ord-retry", to, 1100)
	mustMenu(t, body)

	resume := pause(t, dabba.Proc("email"))
	o := placeOrder(t, newKey(), body)
	waitAllStatus(t, db, 5*time.Second, "paid", []string{o.ID})
	// In the e-mail queue, and so pushed to the stopped consumer, once
	// analytics (bound to the same exchange) has it.
	waitDelivered(t, db, events.OrderPaid, []string{o.ID}, 5*time.Second)
	resume()

	ev := outboxEvents(t, db, o.ID)
	placed, paid := ev[events.OrderPlaced], ev[events.OrderPaid]
	var mails []sinkMail
	held := false
	eventually(t, 20*time.Second, "both mails sent", func() error {
		// order.placed is tried again after 500 ms (the consumer's first
		// pause for a dependency down): order.paid is held that long.
		if h := heldOf(t, db, broker.QueueEmail, o.ID); len(h) == 1 && h[0].EventID == paid.ID && h[0].After == placed.Seq {
			held = true
		}
		if mails = mailsTo(t, to); len(mails) < 2 {
			return fmt.Errorf("%d mails to %s", len(mails), to)
		}
		return nil
	})
	wantMails(t, mails, placed, paid)
	if !held {
		t.Errorf("order.paid was never held behind order.placed: the two were not in one batch, and nothing was reordered")
	}
	wantSettled(t, db, broker.QueueEmail, o.ID, paid.Seq)
}

// TestOrderingTwoInstances runs a second restaurant service beside the
// stack's, both consuming restaurant-notify, and gives 150 orders their
// order.placed and order.paid, and a third of them a cancellation by an
// operator (order.cancelled, then payment's order.refunded). Every order's
// notifications must have been written in that order.
//
// How it forces the reordering: one instance is stopped (SIGSTOP) while
// the orders are placed and paid, the other while a third are cancelled
// and refunded. The broker keeps handing the stopped one its share of the
// messages, so for about a quarter of the orders an event waits in the
// stopped instance while the next one reaches the running instance.
// Without ordering, that one would write the later notification first.
func TestOrderingTwoInstances(t *testing.T) {
	db := mustDB(t)
	r1 := dabba.Proc("restaurant")
	r2, r2Log := startRestaurant2(t)
	r1Before := acked(t, r1.Addr)

	resume := pause(t, r1)
	ids := placeMany(t, 150, "ord-two", "r-ord-two-"+uuid.NewString()[:8], 1400)
	waitAllStatus(t, db, 20*time.Second, "paid", ids)
	waitDelivered(t, db, events.OrderPaid, ids, 20*time.Second)
	resume()

	cancelled := ids[:50]
	resume = pause(t, r2)
	cancelMany(t, cancelled)
	waitDelivered(t, db, events.OrderRefunded, cancelled, 20*time.Second)
	resume()

	types := wantEffectsInOrder(t, db, broker.QueueRestaurant, "restaurant_notifications", ids, time.Minute)
	for i, id := range ids {
		want := []string{events.OrderPlaced, events.OrderPaid}
		if i < len(cancelled) {
			want = append(want, events.OrderCancelled, events.OrderRefunded)
		}
		if !slices.Equal(types[id], want) {
			t.Errorf("order %s: restaurant-notify got %v, want %v", id, types[id], want)
		}
	}
	wantNoneHeld(t, db, broker.QueueRestaurant, ids)

	// Both instances took part: each acked messages, and orders had
	// events handled by each.
	n1, n2 := acked(t, r1.Addr)-r1Before, acked(t, r2.Addr)
	if err := r2.Stop(20 * time.Second); err != nil {
		t.Errorf("stop the second restaurant: %v", err)
	}
	byOrder := handledIn(t, r2Log, broker.QueueRestaurant)
	split := 0
	for _, id := range ids {
		if n := len(byOrder[id]); n > 0 && n < len(types[id]) {
			split++ // the rest were the stack's instance's alone
		}
	}
	t.Logf("acked: %v by the stack's instance, %v by the second; %d of %d orders had events handled by both", n1, n2, split, len(ids))
	if n1 == 0 || n2 == 0 || split == 0 {
		t.Errorf("the work was not shared: %v and %v messages acked, %d orders split", n1, n2, split)
	}
}

// TestOrderingDeadLetteredPlacedHoldsLater: the mail server refuses an
// order's order.placed mail for good (550), so it is dead-lettered; the
// order's order.paid must then wait behind it (held, and listed with the
// dead message by the admin API) rather than be mailed. Once an operator
// replays the dead message, both mails go out, "placed" first.
//
// How it forces the reordering: the dead message is the missing
// predecessor. Without ordering, order.paid would be mailed as soon as it
// came (the address's second send, which the sink accepts), before
// order.placed, and no event would be held.
func TestOrderingDeadLetteredPlacedHoldsLater(t *testing.T) {
	db := mustDB(t)
	to := "refuse-first-550@" + uuid.NewString()[:8] + ".example"
	o := placeOrder(t, newKey(), orderJSONTo("c-ord-dead-"+uuid.NewString(), "r-ord-dead", to, 1300))
	waitAllStatus(t, db, 20*time.Second, "paid", []string{o.ID})
	ev := outboxEvents(t, db, o.ID)
	placed, paid := ev[events.OrderPlaced], ev[events.OrderPaid]

	var dead deadHolding
	eventually(t, 20*time.Second, "order.placed in email.dlq", func() error {
		var ok bool
		if dead, ok = deadOf(t, broker.QueueEmail, o.ID)[events.OrderPlaced]; !ok || dead.Reason != broker.ReasonPermanent {
			return fmt.Errorf("dead letters of the order: %+v", deadOf(t, broker.QueueEmail, o.ID))
		}
		return nil
	})
	eventually(t, 20*time.Second, "order.paid held behind it (or mailed)", func() error {
		if len(heldOf(t, db, broker.QueueEmail, o.ID)) == 0 && len(mailsTo(t, to)) == 0 {
			return fmt.Errorf("neither")
		}
		return nil
	})
	// Held is decided: order.paid's mail is not coming on its own.
	if ms := mailsTo(t, to); len(ms) != 0 {
		t.Fatalf("%d mails sent while order.placed is dead: %+v", len(ms), ms)
	}
	if h := heldOf(t, db, broker.QueueEmail, o.ID); len(h) != 1 || h[0].EventID != paid.ID || h[0].Type != events.OrderPaid ||
		h[0].Seq != paid.Seq || h[0].After != placed.Seq {
		t.Fatalf("held: %+v, want order.paid %s (#%d) after #%d", h, paid.ID, paid.Seq, placed.Seq)
	}
	dead = deadOf(t, broker.QueueEmail, o.ID)[events.OrderPlaced]
	if w := dead.Waiting; len(w) != 1 || w[0].EventID != paid.ID || w[0].Type != events.OrderPaid || w[0].Seq != paid.Seq ||
		w[0].After != placed.Seq || w[0].HeldSince.IsZero() {
		t.Errorf("GET /v1/admin/dlq/email/messages shows the dead order.placed waited on by %+v, want order.paid %s (#%d after #%d)",
			w, paid.ID, paid.Seq, placed.Seq)
	}

	b, _ := json.Marshal(map[string]any{"ids": []string{dead.ID}})
	code, _, answer := do(t, http.MethodPost, base(ports.Orders)+"/v1/admin/dlq/email/replay", adminHeaders(), string(b))
	var res struct {
		Moved int `json:"moved"`
	}
	if code != http.StatusOK || json.Unmarshal(answer, &res) != nil || res.Moved != 1 {
		t.Fatalf("POST /v1/admin/dlq/email/replay = %d %s", code, answer)
	}
	var mails []sinkMail
	eventually(t, 20*time.Second, "both mails sent after the replay", func() error {
		if mails = mailsTo(t, to); len(mails) < 2 {
			return fmt.Errorf("%d mails to %s", len(mails), to)
		}
		return nil
	})
	wantMails(t, mails, placed, paid)
	wantSettled(t, db, broker.QueueEmail, o.ID, paid.Seq)
	if left := deadOf(t, broker.QueueEmail, o.ID); len(left) != 0 {
		t.Errorf("dead letters of the order after the replay: %+v", left)
	}
}

// TestFaultOrderingConsumerKilledMidBatch runs two restaurant instances
// under a mixed load (20 orders a second: paid, declined, cancelled before
// and after the charge) and SIGKILLs one with a batch in hand three
// times: once after it was stopped for 2 s with its prefetch filling up,
// once while its batch's transaction is open (waiting for an order's
// lock the test holds), and the other instance after a stop. Every
// order's effects must come out exactly once and, on restaurant-notify
// and e-mail, in the order its events were written.
//
// How it forces the reordering: while one instance is stopped, or stuck
// in its transaction, the other gets the later events of orders whose
// earlier ones the first holds, and applies them; the killed instance's
// messages come back to the queue behind them. Without ordering, their
// notifications are written in the wrong order.
func TestFaultOrderingConsumerKilledMidBatch(t *testing.T) {
	needFaults(t)
	db := mustDB(t)
	gatewayConfig(t, fmt.Sprintf(`{"latency_ms": 5, "decline_amount_cents": %d}`, declinePrice))
	defer gatewayConfig(t, `{"latency_ms": 5, "decline_amount_cents": 0}`)
	r1 := dabba.Proc("restaurant")
	r2, _ := startRestaurant2(t)

	load := startMixedLoad(t, "ord-kill", 20)
	time.Sleep(3 * time.Second)
	stopThenKill(t, r1)
	time.Sleep(3 * time.Second)
	hostage := killInTransaction(t, db, map[string]*stack.Proc{"restaurant": r1, "restaurant-2": r2}, "r-ord-kill")
	time.Sleep(3 * time.Second)
	stopThenKill(t, r2)
	time.Sleep(3 * time.Second)
	ids := append(load.Stop(), hostage)

	wantLedger(t, db, ids, 2*time.Minute, func(id string) []effects {
		if id == hostage {
			return []effects{declined}
		}
		return load.want(id)
	}, nil)
	wantEffectsInOrder(t, db, broker.QueueRestaurant, "restaurant_notifications", ids, 30*time.Second)
	wantEffectsInOrder(t, db, broker.QueueEmail, "emails_sent", ids, 30*time.Second)
	wantNoneHeld(t, db, broker.QueueRestaurant, ids)
	wantNoneHeld(t, db, broker.QueueEmail, ids)
}

// stopThenKill stops p (SIGSTOP) for 2 s, while the broker keeps handing
// it messages up to its prefetch and the other instances go on, then
// SIGKILLs it with them in hand and starts it again.
func stopThenKill(t *testing.T, p *stack.Proc) {
	t.Helper()
	resume := pause(t, p)
	time.Sleep(2 * time.Second)
	p.Kill()
	resume() // to no one: spends it
	revive(t, p)
}

// killInTransaction places a hostage order (declined by the provider, so
// that only its order.placed reaches the restaurant), holds its
// restaurant-notify lock (the advisory lock the consumer takes per order,
// postgres.LockKeys), waits until one of procs (by the application_name
// of its database sessions) waits for that lock inside a batch's
// transaction, lets the others work for a second, SIGKILLs it, releases
// the lock and starts it again. It returns the hostage's id.
func killInTransaction(t *testing.T, db *pgxpool.Pool, procs map[string]*stack.Proc, restaurant string) string {
	t.Helper()
	ctx := context.Background()
	// Stopped, no instance can take the order.placed before the lock.
	var resumes []func()
	for _, p := range procs {
		resumes = append(resumes, pause(t, p))
	}
	hostage := placeOrder(t, newKey(), orderJSON("c-ord-hostage-"+uuid.NewString(), restaurant, declinePrice)).ID
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // released below; this is for a test that fails first
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0))", broker.QueueRestaurant, hostage); err != nil {
		t.Fatal(err)
	}
	for _, resume := range resumes {
		resume()
	}
	// Failing to find the victim fails the test but not the rest of it:
	// the load and its checks go on without this kill.
	var victim string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := db.QueryRow(ctx, `SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'advisory' AND NOT l.granted
			AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1 || ' ' || $2, 0)`,
			broker.QueueRestaurant, hostage).Scan(&victim)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Errorf("find the instance waiting for the hostage's lock: %v", err)
			return hostage
		}
		if time.Now().After(deadline) {
			t.Errorf("no instance waits for the hostage's lock within 10 s: do the consumers lock their orders?")
			return hostage
		}
	}
	p, ok := procs[victim]
	if !ok {
		t.Errorf("%q waits for the hostage's lock", victim)
		return hostage
	}
	time.Sleep(time.Second)
	p.Kill()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	revive(t, p)
	t.Logf("killed %s in a batch's transaction (hostage order %s)", victim, hostage)
	return hostage
}

// maxPause bounds a pause: a stopped service sends no AMQP heartbeats,
// and the broker drops a connection silent for about its heartbeat
// timeout (5 s).
const maxPause = 3 * time.Second

// pause stops p's process group (SIGSTOP; the harness signals a service's
// group) until resume is called, maxPause has passed, or the test ends.
func pause(t testing.TB, p *stack.Proc) (resume func()) {
	t.Helper()
	pid := p.Pid()
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", p.Name, err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { _ = syscall.Kill(-pid, syscall.SIGCONT) }) }
	timer := time.AfterFunc(maxPause, resume)
	t.Cleanup(func() {
		timer.Stop()
		resume()
	})
	return resume
}

// restaurant2Addr is where a second restaurant instance serves HTTP.
const restaurant2Addr = "127.0.0.1:18093"

// startRestaurant2 starts a second instance of the restaurant service,
// consuming restaurant-notify beside the stack's own, in the suite's
// environment. Its database sessions are called restaurant-2
// (pg_stat_activity) and it logs to a file of its own, whose path it
// returns. It is stopped when the test ends.
func startRestaurant2(t *testing.T) (*stack.Proc, string) {
	t.Helper()
	svc := dabba.Proc("restaurant").Service
	svc.Addr = restaurant2Addr
	env := maps.Clone(stackEnv)
	env["DATABASE_URL"] = withApplicationName(testenv.Env.DatabaseURL(), "restaurant-2")
	path := filepath.Join(os.TempDir(), "dabba-e2e-restaurant-2.log")
	logs, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	p := stack.NewProc(svc, binDir, stack.Environ(env), logs)
	t.Cleanup(func() {
		if err := p.Stop(20 * time.Second); err != nil {
			t.Errorf("stop the second restaurant: %v", err)
		}
		logs.Close()
	})
	revive(t, p)
	return p, path
}

// withApplicationName adds an application_name to a database URL (or
// keyword/value string) that has none. The URL's query is left as it is:
// pgx reads a "+" in it as a "+", not as the space url.Values would mean.
func withApplicationName(dbURL, name string) string {
	if u, err := url.Parse(dbURL); err == nil && u.Scheme != "" {
		return postgres.WithParam(dbURL, "application_name", name)
	}
	return dbURL + " application_name=" + name
}

// acked is how many restaurant-notify messages the restaurant instance at
// addr acked since it started.
func acked(t testing.TB, addr string) float64 {
	t.Helper()
	n, _ := sum(scrape(t, "http://"+addr+"/metrics"), metrics.MessagesAcked, `queue="`+broker.QueueRestaurant+`"`)
	return n
}

// handledIn returns, by order id, the ids of the messages of queue that
// the service log at path says were handled.
func handledIn(t testing.TB, path, queue string) map[string]map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		_, line, _ := strings.Cut(sc.Text(), "{")
		var l struct {
			Msg       string `json:"msg"`
			Queue     string `json:"queue"`
			MessageID string `json:"message_id"`
			OrderID   string `json:"order_id"`
		}
		if json.Unmarshal([]byte("{"+line), &l) != nil || l.Msg != "message handled" || l.Queue != queue {
			continue
		}
		if out[l.OrderID] == nil {
			out[l.OrderID] = map[string]bool{}
		}
		out[l.OrderID][l.MessageID] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// placeMany places n orders of one dish at price from restaurant, each by
// a customer of its own, 16 at a time, and returns their ids.
func placeMany(t testing.TB, n int, tag, restaurant string, price int64) []string {
	t.Helper()
	mustMenu(t, orderJSON("c-"+tag, restaurant, price))
	signer := token.NewSigner([]byte(e2eSecret))
	ids := make([]string, n)
	var g errgroup.Group
	g.SetLimit(16)
	for i := range ids {
		g.Go(func() error {
			customer := "c-" + tag + "-" + uuid.NewString()
			tok, err := signer.Mint(token.AudienceCustomer, customer, time.Hour)
			if err != nil {
				return err
			}
			code, b, err := request(http.MethodPost, "/v1/orders", tok, newKey(), orderJSON(customer, restaurant, price))
			var o order
			if err != nil || code != http.StatusCreated || json.Unmarshal(b, &o) != nil {
				return fmt.Errorf("POST /v1/orders = %d %s: %v", code, b, err)
			}
			ids[i] = o.ID
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// cancelMany cancels orders as an operator, 16 at a time.
func cancelMany(t testing.TB, ids []string) {
	t.Helper()
	tok := opsToken(t)
	var g errgroup.Group
	g.SetLimit(16)
	for _, id := range ids {
		g.Go(func() error {
			code, b, err := request(http.MethodPost, "/v1/orders/"+id+"/status", tok, "", `{"status":"cancelled"}`)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("cancel %s = %d %s: %v", id, code, b, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// requestPace keeps the suite's bursts under the orders service's limit
// per client address (ORDERS_RATE_PER_IP, 200 a second), with room for
// the rest of the test's requests.
var requestPace = rate.NewLimiter(120, 1)

// request sends a JSON request to the orders service with tok (and an
// Idempotency-Key, unless key is empty), paced by requestPace, and again
// after a 429 or 503 (after its Retry-After), for up to 30 s. Unlike do,
// it may run in a goroutine of its own.
func request(method, path, tok, key, body string) (int, []byte, error) {
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := requestPace.Wait(context.Background()); err != nil {
			return 0, nil, err
		}
		req, err := http.NewRequest(method, base(ports.Orders)+path, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		for k, v := range bearer(tok) {
			req.Header.Set(k, v)
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if retry := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable; !retry || time.Now().After(deadline) {
			return resp.StatusCode, b, err
		}
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		time.Sleep(time.Duration(max(secs, 1)) * time.Second)
	}
}

// waitAllStatus waits until every order of ids has status.
func waitAllStatus(t testing.TB, db *pgxpool.Pool, within time.Duration, status string, ids []string) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("%d orders %s", len(ids), status), func() error {
		var n int
		if err := db.QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE id = ANY($1) AND status = $2", ids, status).Scan(&n); err != nil {
			return err
		}
		if n != len(ids) {
			return fmt.Errorf("%d of %d", n, len(ids))
		}
		return nil
	})
}

// waitDelivered waits until every order of ids has an event of type typ
// in analytics, bound to every event: the relay has published it, so it
// is in every queue bound to it, and with their consumers (those that
// have room in their prefetch).
func waitDelivered(t testing.TB, db *pgxpool.Pool, typ string, ids []string, within time.Duration) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("%s of %d orders published", typ, len(ids)), func() error {
		var n int
		if err := db.QueryRow(context.Background(), "SELECT count(DISTINCT order_id) FROM analytics_events WHERE order_id = ANY($1) AND event_type = $2",
			ids, typ).Scan(&n); err != nil {
			return err
		}
		if n != len(ids) {
			return fmt.Errorf("%d of %d", n, len(ids))
		}
		return nil
	})
}

// outboxEvent is one of an order's events as the outbox holds it.
type outboxEvent struct {
	ID  string
	Seq int // 0: not numbered
}

// outboxEvents returns an order's events by type (each type once).
func outboxEvents(t testing.TB, db *pgxpool.Pool, orderID string) map[string]outboxEvent {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT routing_key, event_id::text, coalesce(seq, 0) FROM outbox WHERE order_id = $1", orderID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]outboxEvent{}
	var typ string
	var e outboxEvent
	if _, err := pgx.ForEachRow(rows, []any{&typ, &e.ID, &e.Seq}, func() error { out[typ] = e; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{events.OrderPlaced, events.OrderPaid} {
		if out[typ].Seq == 0 {
			t.Errorf("order %s: %s not numbered in the outbox (%+v): is ordering off (dabba.ordering)?", orderID, typ, out[typ])
		}
	}
	return out
}

// heldEvent is a row of held_events.
type heldEvent struct {
	EventID, Type string
	Seq, After    int
}

// heldOf returns the events consumer holds back for an order, by seq.
func heldOf(t testing.TB, db *pgxpool.Pool, consumer, orderID string) []heldEvent {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT event_id, routing_key, seq, after FROM held_events WHERE consumer = $1 AND order_id = $2 ORDER BY seq",
		consumer, orderID)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[heldEvent])
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// wantNoneHeld checks that consumer holds no event of the orders back.
func wantNoneHeld(t testing.TB, db *pgxpool.Pool, consumer string, ids []string) {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM held_events WHERE consumer = $1 AND order_id = ANY($2)", consumer, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%s still holds %d events of the orders", consumer, n)
	}
}

// wantSettled waits until consumer holds nothing of the order back and
// has applied its events up to seq.
func wantSettled(t testing.TB, db *pgxpool.Pool, consumer, orderID string, seq int) {
	t.Helper()
	eventually(t, 10*time.Second, "order settled on "+consumer, func() error {
		var at int
		if err := db.QueryRow(context.Background(), "SELECT seq FROM order_cursors WHERE consumer = $1 AND order_id = $2", consumer, orderID).Scan(&at); err != nil {
			return fmt.Errorf("cursor: %w", err)
		}
		if h := heldOf(t, db, consumer, orderID); len(h) != 0 || at != seq {
			return fmt.Errorf("at #%d, want #%d; held %+v", at, seq, h)
		}
		return nil
	})
}

// sinkMail is a mail as the fake mail provider's GET /messages shows it.
type sinkMail struct {
	Subject    string    `json:"subject"`
	DabbaID    string    `json:"dabba_message_id"` // the event's id
	ReceivedAt time.Time `json:"received_at"`
}

// mailsTo returns the mails the fake provider received for to, in the
// order it received them.
func mailsTo(t testing.TB, to string) []sinkMail {
	t.Helper()
	code, _, b := do(t, http.MethodGet, base(ports.SMTPHTTP)+"/messages?to="+url.QueryEscape(to), nil, "")
	var ms []sinkMail
	if code != http.StatusOK || json.Unmarshal(b, &ms) != nil {
		t.Fatalf("GET /messages?to=%s = %d %.300s", to, code, b)
	}
	return ms
}

// wantMails checks that mails are the mails of want's events, one each,
// in that order.
func wantMails(t testing.TB, mails []sinkMail, want ...outboxEvent) {
	t.Helper()
	var got, wantIDs []string
	for _, m := range mails {
		got = append(got, m.DabbaID)
	}
	for _, e := range want {
		wantIDs = append(wantIDs, e.ID)
	}
	if !slices.Equal(got, wantIDs) || !slices.IsSortedFunc(mails, func(a, b sinkMail) int { return a.ReceivedAt.Compare(b.ReceivedAt) }) {
		t.Errorf("mails received: %+v; want the mails of events %v, in that order", mails, wantIDs)
	}
}

// deadHolding is a dead message as GET /v1/admin/dlq/{queue}/messages
// shows it, with the events of its order held back behind it.
type deadHolding struct {
	ID      string `json:"message_id"`
	OrderID string `json:"order_id"`
	Type    string `json:"type"`
	Reason  string `json:"reason"`
	Waiting []struct {
		EventID   string    `json:"event_id"`
		Type      string    `json:"type"`
		Seq       int       `json:"seq"`
		After     int       `json:"after"`
		HeldSince time.Time `json:"held_since"`
	} `json:"waiting"`
}

// deadOf returns the messages of queue's DLQ about an order, by type, as
// the admin API shows them.
func deadOf(t testing.TB, queue, orderID string) map[string]deadHolding {
	t.Helper()
	code, _, b := do(t, http.MethodGet, base(ports.Orders)+"/v1/admin/dlq/"+queue+"/messages?limit=1000", adminHeaders(), "")
	var page struct {
		Messages []deadHolding `json:"messages"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &page) != nil {
		t.Fatalf("GET /v1/admin/dlq/%s/messages = %d %.300s", queue, code, b)
	}
	out := map[string]deadHolding{}
	for _, m := range page.Messages {
		if m.OrderID == orderID {
			out[m.Type] = m
		}
	}
	return out
}

func adminHeaders() map[string]string { return bearer(e2eAdminToken) }

// effect is one of an order's events that a consumer is bound to, and
// whether and when its effect row was written.
type effect struct {
	Type    string
	Seq     int   // 0: not numbered
	Written bool  // the effect's row exists
	Age     int64 // age(xmin) of the row: the higher, the older its transaction
}

// wantEffectsInOrder waits until table, the effects of queue's consumer
// (one row per event, keyed by message_id), has a row for each event of
// each order of ids that queue is bound to, checks that they were written
// in the order the events were (by seq, or as written to the outbox when
// not numbered), and returns each order's event types in that order.
//
// When is told by xmin, the id of the transaction that wrote a row: it is
// handed out at a transaction's first write, in increasing order. An
// ordered consumer applies an order's event only once the transaction that
// applied the one before has committed (it waits for the order's lock, or
// holds the event and publishes it again after that commit), so the later
// row has a younger xmin, or the same one when one transaction applied
// both, in its rounds. created_at is no use: now() is a transaction's
// start, which two overlapping transactions can invert.
func wantEffectsInOrder(t testing.TB, db *pgxpool.Pool, queue, table string, ids []string, within time.Duration) map[string][]string {
	t.Helper()
	q, ok := broker.LookupWorkQueue(queue)
	if !ok {
		t.Fatalf("no work queue %s", queue)
	}
	var keys []string
	for _, k := range events.RoutingKeys {
		if q.Binds(k) {
			keys = append(keys, k)
		}
	}
	var byOrder map[string][]effect
	eventually(t, within, fmt.Sprintf("every effect of %d orders in %s", len(ids), table), func() error {
		rows, err := db.Query(context.Background(), fmt.Sprintf(`SELECT o.order_id::text, o.routing_key, coalesce(o.seq, 0),
				n.message_id IS NOT NULL, coalesce(age(n.xmin), 0)
			FROM outbox o LEFT JOIN %s n ON n.message_id = o.event_id::text
			WHERE o.order_id = ANY($1::uuid[]) AND o.routing_key = ANY($2)
			ORDER BY o.order_id, o.seq, o.id`, table), ids, keys)
		if err != nil {
			return err
		}
		byOrder = map[string][]effect{}
		var id string
		var e effect
		missing := 0
		if _, err := pgx.ForEachRow(rows, []any{&id, &e.Type, &e.Seq, &e.Written, &e.Age}, func() error {
			byOrder[id] = append(byOrder[id], e)
			if !e.Written {
				missing++
			}
			return nil
		}); err != nil {
			return err
		}
		if missing > 0 {
			return fmt.Errorf("%d events without their effect", missing)
		}
		return nil
	})
	types := map[string][]string{}
	var inverted []string
	unnumbered, together, apart := 0, 0, 0
	for _, id := range ids {
		es := byOrder[id]
		for i, e := range es {
			types[id] = append(types[id], e.Type)
			if e.Seq == 0 {
				unnumbered++
			}
			if i == 0 {
				continue
			}
			switch prev := es[i-1]; {
			case e.Age > prev.Age:
				inverted = append(inverted, fmt.Sprintf("order %s: %s written before %s", id, e.Type, prev.Type))
			case e.Age == prev.Age:
				together++
			default:
				apart++
			}
		}
	}
	t.Logf("%s: %d orders; of their successive events, %d applied by successive transactions, %d by one", queue, len(ids), apart, together)
	if unnumbered > 0 {
		t.Errorf("%s: %d events not numbered in the outbox: is ordering off (dabba.ordering)?", queue, unnumbered)
	}
	if len(inverted) > 0 {
		t.Errorf("%s: %d events applied before the event before them, e.g. %v", queue, len(inverted), inverted[:min(len(inverted), 5)])
	}
	return types
}
