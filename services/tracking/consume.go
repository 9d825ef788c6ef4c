package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// Publisher publishes one message; *broker.Publisher is one.
type Publisher interface {
	Publish(ctx context.Context, m broker.Message) error
}

// newConsumer keeps tracking_orders up to date from the durable "tracking"
// queue (every order event): each order's destination, rider and newest
// status. Events may arrive out of order or twice: a status or an
// assignment only replaces an older one, and the inbox makes a redelivery
// change nothing.
//
// After the commit it publishes what is now stored as a transient
// "order.<id>" message on the locations exchange, so every tracking instance
// with a customer watching that order (and only those: they bind the key
// while someone watches) passes the change on. The "tracking" queue has
// competing consumers, so this is how the instances that did not take the
// event hear of it. A lost live update costs nothing lasting: the table has
// it, and a reconnecting customer reads it.
func newConsumer(db *pgxpool.Pool, live Publisher, log *zap.Logger) *consumer.Consumer {
	apply := func(ctx context.Context, tx pgx.Tx, batch []consumer.Event[json.RawMessage]) error {
		var changes []change
		for _, e := range batch {
			c, err := changeOf(events.Envelope{ID: e.ID, Type: e.Type, OrderID: e.OrderID, OccurredAt: e.OccurredAt, Data: e.Data})
			if err != nil {
				e.Fail(err)
				continue
			}
			changes = append(changes, c)
		}
		updates, err := store(ctx, tx, changes)
		if err != nil {
			return err
		}
		byOrder := map[string]broker.Delivery{}
		for _, e := range batch {
			byOrder[e.OrderID] = e.Delivery
		}
		consumer.AfterCommit(ctx, func() {
			for _, u := range updates {
				publishUpdate(ctx, live, log, byOrder[u.OrderID], u)
			}
		})
		return nil
	}
	return consumer.New(broker.QueueTracking, db, log, consumer.OnEvery(events.RoutingKeys, apply)...)
}

// publishUpdate tells the tracking instances whose customers watch u's
// order what is now stored of it.
func publishUpdate(ctx context.Context, live Publisher, log *zap.Logger, d broker.Delivery, u orderUpdate) {
	body, err := json.Marshal(u)
	if err != nil {
		log.Error("encode order update", append(d.Fields(), zap.Error(err))...)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := live.Publish(pctx, broker.Message{Exchange: broker.ExchangeLocations, RoutingKey: orderKey(u.OrderID),
		Body: body, Transient: true}); err != nil {
		log.Warn("live order update not published", append(d.Fields(), zap.Error(err))...)
	}
}

// change is what one event changes in tracking_orders: an assignment
// (Rider set) or a status, with the destination when the event is
// order.placed.
type change struct {
	OrderID string
	At      time.Time
	Rider   string
	Status  string
	Lat     *float64
	Lng     *float64
	Line1   *string
}

// changeOf reads what e changes.
func changeOf(e events.Envelope) (change, error) {
	c := change{OrderID: e.OrderID, At: e.OccurredAt}
	if e.Type == events.OrderRiderAssigned {
		var a events.RiderAssigned
		if err := events.DecodeData(e, &a); err != nil {
			return c, err
		}
		if !validRiderID(a.RiderID) {
			return c, broker.Permanent(fmt.Errorf("rider id %q", a.RiderID))
		}
		c.Rider = a.RiderID
		return c, nil
	}
	status, ok := statusOf(e.Type)
	if !ok {
		return c, broker.Permanent(fmt.Errorf("tracking does not handle %s", e.Type))
	}
	c.Status = status
	if e.Type == events.OrderPlaced {
		var p events.Placed
		if err := events.DecodeData(e, &p); err != nil {
			return c, err
		}
		if a := p.DeliveryAddress; validLatLng(a.Lat, a.Lng) && (a.Lat != 0 || a.Lng != 0) {
			c.Lat, c.Lng, c.Line1 = &a.Lat, &a.Lng, &a.Line1
		}
	}
	return c, nil
}

// store applies changes with one statement for statuses and one for
// assignments, and returns what is now stored of each order they touch.
// A status or an assignment only replaces an older one, so events that
// arrive out of order leave the newest; the newest of one batch's changes
// to an order goes first, since one statement cannot update a row twice.
func store(ctx context.Context, tx pgx.Tx, changes []change) ([]orderUpdate, error) {
	statuses, riders, dests := map[string]change{}, map[string]change{}, map[string]change{}
	for _, c := range changes {
		latest := statuses
		if c.Rider != "" {
			latest = riders
		}
		if prev, seen := latest[c.OrderID]; !seen || prev.At.Before(c.At) {
			latest[c.OrderID] = c
		}
		if c.Lat != nil {
			dests[c.OrderID] = c
		}
	}
	orders := make([]string, 0, len(statuses)+len(riders))
	for id, c := range statuses {
		if d, ok := dests[id]; ok {
			c.Lat, c.Lng, c.Line1 = d.Lat, d.Lng, d.Line1
			statuses[id] = c
		}
		orders = append(orders, id)
	}
	for id := range riders {
		if _, ok := statuses[id]; !ok {
			orders = append(orders, id)
		}
	}
	var b pgx.Batch
	if n := len(statuses); n > 0 {
		ids, sts, ats := make([]string, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
		lats, lngs, lines := make([]*float64, 0, n), make([]*float64, 0, n), make([]*string, 0, n)
		for _, c := range statuses {
			ids, sts, ats = append(ids, c.OrderID), append(sts, c.Status), append(ats, c.At)
			lats, lngs, lines = append(lats, c.Lat), append(lngs, c.Lng), append(lines, c.Line1)
		}
		b.Queue(`INSERT INTO tracking_orders (order_id, status, status_at, dest_lat, dest_lng, dest_line1)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[], $6::text[])
			ON CONFLICT (order_id) DO UPDATE SET
				status = CASE WHEN tracking_orders.status_at IS NULL OR tracking_orders.status_at < excluded.status_at
					THEN excluded.status ELSE tracking_orders.status END,
				status_at = greatest(tracking_orders.status_at, excluded.status_at),
				dest_lat = coalesce(excluded.dest_lat, tracking_orders.dest_lat),
				dest_lng = coalesce(excluded.dest_lng, tracking_orders.dest_lng),
				dest_line1 = coalesce(excluded.dest_line1, tracking_orders.dest_line1),
				updated_at = now()`, ids, sts, ats, lats, lngs, lines)
	}
	if n := len(riders); n > 0 {
		ids, rs, ats := make([]string, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
		for _, c := range riders {
			ids, rs, ats = append(ids, c.OrderID), append(rs, c.Rider), append(ats, c.At)
		}
		b.Queue(`INSERT INTO tracking_orders (order_id, rider_id, rider_at)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[])
			ON CONFLICT (order_id) DO UPDATE SET rider_id = excluded.rider_id, rider_at = excluded.rider_at, updated_at = now()
			WHERE tracking_orders.rider_at IS NULL OR tracking_orders.rider_at < excluded.rider_at`, ids, rs, ats)
	}
	if b.Len() == 0 {
		return nil, nil
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, fmt.Errorf("store order changes: %w", err)
	}
	return loadOrders(ctx, tx, orders)
}

// statusOf maps an order event's routing key to the status it announces.
func statusOf(routingKey string) (string, bool) {
	for status, key := range events.StatusEvent {
		if key == routingKey {
			return status, true
		}
	}
	return "", false
}
