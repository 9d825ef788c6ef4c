package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/stack"
)

// bench holds what every step needs.
type bench struct {
	sz      sizes
	db      *pgxpool.Pool
	dbURL   string // the stack's DATABASE_URL
	stack   *stack.Stack
	amqpURL string
	r       *Results
	pprof   bool // profile the services during the hold
	// restart stops the stack and starts it again, its environment
	// overridden by env (the ordering step's DATABASE_URL).
	restart func(ctx context.Context, env map[string]string) error
}

// ceilings measures the machine's raw capacity for what an order and a fix
// cost, with no Dabba code in the way.
func (b *bench) ceilings(ctx context.Context) error {
	if err := b.postgresCeiling(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := b.persistentCeiling(ctx); err != nil {
		return fmt.Errorf("rabbitmq persistent: %w", err)
	}
	if err := b.transientCeiling(ctx); err != nil {
		return fmt.Errorf("rabbitmq transient: %w", err)
	}
	return nil
}

// postgresCeiling commits an order row and an outbox row per transaction,
// from as many connections as the orders service's pool has, into copies of
// the real tables (so the outbox trigger and relay stay out of it).
func (b *bench) postgresCeiling(ctx context.Context) error {
	suffix := fmt.Sprint(os.Getpid())
	orders, outbox := "bench_orders_"+suffix, "bench_outbox_"+suffix
	if _, err := b.db.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (LIKE orders INCLUDING DEFAULTS INCLUDING INDEXES);
		CREATE TABLE %s (LIKE outbox INCLUDING DEFAULTS INCLUDING INDEXES)`, orders, outbox)); err != nil {
		return err
	}
	defer b.db.Exec(context.Background(), fmt.Sprintf("DROP TABLE %s, %s", orders, outbox))
	items := []byte(`[{"sku":"thali","name":"Veg thali","quantity":1,"unit_price_cents":25000}]`)
	addr := []byte(`{"line1":"Dadar West","lat":19.02,"lng":72.84}`)
	payload := bytes.Repeat([]byte("x"), 600) // an order.placed envelope's size
	var n atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(b.sz.Ceiling)
	var wg sync.WaitGroup
	for range b.sz.Concurrency {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				err := pgx.BeginFunc(ctx, b.db, func(tx pgx.Tx) error {
					var batch pgx.Batch
					id, now := uuid.New(), time.Now()
					batch.Queue(fmt.Sprintf(`INSERT INTO %s (id, customer_id, restaurant_id, email, items, delivery_address, total_cents, status, created_at, updated_at)
						VALUES ($1, 'bench', 'bench', 'b@example.com', $2, $3, 25000, 'placed', $4, $4)`, orders), id, items, addr, now)
					batch.Queue(fmt.Sprintf("INSERT INTO %s (event_id, routing_key, order_id, payload) VALUES ($1, 'order.placed', $2, $3)", outbox),
						uuid.New(), id, payload)
					return tx.SendBatch(ctx, &batch).Close()
				})
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				n.Add(1)
			}
		})
	}
	start := time.Now()
	wg.Wait()
	b.r.Ceilings.PostgresOrderTxPerS = float64(n.Load()) / time.Since(start).Seconds()
	b.r.Ceilings.PostgresConcurrency = b.sz.Concurrency
	return firstErr
}

// persistentCeiling publishes persistent messages with confirms (batches of
// 500 in flight, as the outbox relay does) to a topic exchange bound to
// four quorum queues, and drains the queues with one consumer each acking
// every message, as the services do.
func (b *bench) persistentCeiling(ctx context.Context) error {
	conn, err := amqp.Dial(b.amqpURL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	ex := fmt.Sprintf("bench.orders.%d", os.Getpid())
	if err := ch.ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
		return err
	}
	defer ch.ExchangeDelete(ex, false, false)
	var queues []string
	for i := range 4 {
		q := fmt.Sprintf("%s.q%d", ex, i)
		if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			return err
		}
		defer ch.QueueDelete(q, false, false, false)
		if err := ch.QueueBind(q, "order.#", ex, false, nil); err != nil {
			return err
		}
		queues = append(queues, q)
	}
	var delivered atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, q := range queues {
		cch, err := conn.Channel()
		if err != nil {
			return err
		}
		_ = cch.Qos(1000, 0, false)
		deliveries, err := cch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		go func() {
			for {
				select {
				case <-cctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					_ = d.Ack(false)
					delivered.Add(1)
				}
			}
		}()
	}
	body := bytes.Repeat([]byte("x"), 600)
	var published atomic.Int64
	start := time.Now()
	deadline := start.Add(b.sz.Ceiling)
	var wg sync.WaitGroup
	var pubErr error
	var once sync.Once
	for range 2 {
		pch, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := pch.Confirm(false); err != nil {
			return err
		}
		wg.Go(func() {
			for time.Now().Before(deadline) {
				confirms := make([]*amqp.DeferredConfirmation, 0, 500)
				for range 500 {
					dc, err := pch.PublishWithDeferredConfirmWithContext(ctx, ex, "order.placed", false, false,
						amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body})
					if err != nil {
						once.Do(func() { pubErr = err })
						return
					}
					confirms = append(confirms, dc)
				}
				for _, dc := range confirms {
					if ok, err := dc.WaitContext(ctx); err != nil || !ok {
						once.Do(func() { pubErr = fmt.Errorf("confirm: ok=%v %v", ok, err) })
						return
					}
				}
				published.Add(int64(len(confirms)))
			}
		})
	}
	wg.Wait()
	pubTime := time.Since(start)
	if pubErr != nil {
		return pubErr
	}
	want := 4 * published.Load()
	for delivered.Load() < want {
		if time.Since(start) > b.sz.Ceiling+5*time.Minute {
			return fmt.Errorf("drained %d of %d", delivered.Load(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.r.Ceilings.RabbitPersistentPerS = float64(published.Load()) / pubTime.Seconds()
	b.r.Ceilings.RabbitPersistentDrainPerS = float64(want) / time.Since(start).Seconds()
	return nil
}

// transientCeiling publishes transient messages (a fix's size, routing key
// rider.<id>) to a topic exchange without confirms, as the tracking ingest
// does, and counts what a consumer on a bound bounded queue receives.
func (b *bench) transientCeiling(ctx context.Context) error {
	conn, err := amqp.Dial(b.amqpURL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	ex := fmt.Sprintf("bench.locations.%d", os.Getpid())
	if err := ch.ExchangeDeclare(ex, "topic", false, true, false, false, nil); err != nil {
		return err
	}
	defer ch.ExchangeDelete(ex, false, false)
	q, err := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": 100_000, "x-overflow": "drop-head"})
	if err != nil {
		return err
	}
	if err := ch.QueueBind(q.Name, "rider.*", ex, false, nil); err != nil {
		return err
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return err
	}
	var delivered atomic.Int64
	go func() {
		for range deliveries {
			delivered.Add(1)
		}
	}()
	body := bytes.Repeat([]byte("x"), 150)
	start := time.Now()
	deadline := start.Add(b.sz.Ceiling)
	var wg sync.WaitGroup
	for p := range 2 {
		pch, err := conn.Channel()
		if err != nil {
			return err
		}
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				if pch.PublishWithContext(ctx, ex, fmt.Sprintf("rider.%d-%d", p, i%10_000), false, false,
					amqp.Publishing{ContentType: "application/json", Body: body}) != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	// What arrives within a moment of the end counts; what the bounded
	// queue dropped does not.
	time.Sleep(200 * time.Millisecond)
	b.r.Ceilings.RabbitTransientPerS = float64(delivered.Load()) / time.Since(start).Seconds()
	return nil
}
