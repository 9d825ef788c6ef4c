package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
)

// feedKeys are the events that change what a customer's tracking page
// shows, or what the ingest does with the rider's fixes: every status after
// placed, rider assignments and tracking's own alerts. (A customer cannot
// watch an order before it is placed; its destination is read with the
// order when the customer connects. A refund moves money, not the order.)
var feedKeys = slices.DeleteFunc(slices.Clone(events.RoutingKeys), func(k string) bool {
	return k == events.OrderPlaced || k == events.OrderRefunded
})

// feedPoll is how often the feed looks for new events: a status change
// reaches a watching customer within about this long.
const feedPoll = 100 * time.Millisecond

// orderFeed hands the hub every change to the orders customers watch here,
// read from the outbox in commit order (outbox.Read). What tracking shows
// of an order is what the orders database holds (read when a customer
// connects) plus what the outbox has said since, so tracking keeps no copy
// of its own: no durable queue, no per-event delivery or write. Each
// instance reads the feed from where it started; a change to an order
// nobody watches here costs a map look-up.
type orderFeed struct {
	db         *pgxpool.Pool
	hub        *Hub
	deliveries *Deliveries
	log        *zap.Logger
}

// Run feeds the hub until ctx is done. A database outage pauses it; it goes
// on from where it was, since the outbox keeps its rows for a day.
func (f orderFeed) Run(ctx context.Context) error {
	log := f.log.With(zap.String("component", "order-feed"))
	var pos outbox.Position
	started := false
	backoff := feedPoll
	for {
		var err error
		if !started {
			pos, err = outbox.Head(ctx, f.db)
			started = err == nil
		}
		var entries []outbox.Entry
		if err == nil {
			entries, pos, err = outbox.Read(ctx, f.db, pos, feedKeys, 1000)
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := feedPoll
		if err != nil {
			log.Warn("read the order feed; will retry", zap.Error(err), zap.Duration("in", backoff))
			wait, backoff = backoff, min(2*backoff, 5*time.Second)
		} else {
			backoff = feedPoll
		}
		for _, e := range entries {
			u, err := updateOf(e)
			if err != nil {
				log.Error("order event skipped", zap.Int64("outbox_id", e.Position.ID), zap.Error(err))
				continue
			}
			f.hub.Update(u)
			f.deliveries.Update(u)
		}
		if len(entries) == 1000 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// updateOf reads what an order event changes: its status, or its rider.
func updateOf(e outbox.Entry) (orderUpdate, error) {
	if e.Err != nil {
		return orderUpdate{}, e.Err
	}
	u := orderUpdate{OrderID: e.Event.OrderID}
	switch e.Event.Type {
	case events.OrderRiderNear:
		var n events.RiderNear
		if err := events.DecodeData(e.Event, &n); err != nil {
			return u, err
		}
		u.Near = &nearMsg{Type: "rider_near", OrderID: u.OrderID, RiderID: n.RiderID, DistanceM: n.DistanceM, At: e.Event.OccurredAt}
		return u, nil
	case events.OrderRiderArriving:
		u.Arriving = true
		return u, nil
	}
	if e.Event.Type == events.OrderRiderAssigned {
		var a events.RiderAssigned
		if err := events.DecodeData(e.Event, &a); err != nil {
			return u, err
		}
		if !validRiderID(a.RiderID) {
			return u, fmt.Errorf("%s: rider id %q", e.Event.Type, a.RiderID)
		}
		u.RiderID, u.RiderAt = a.RiderID, e.Event.OccurredAt
		return u, nil
	}
	for status, key := range events.StatusEvent {
		if key == e.Event.Type {
			u.Status, u.StatusAt = status, e.Event.OccurredAt
			return u, nil
		}
	}
	return u, fmt.Errorf("tracking does not know %s", e.Event.Type)
}
