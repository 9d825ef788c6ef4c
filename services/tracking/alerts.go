package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/outbox"
)

// alertQueue bounds the alerts waiting for the writer; an alert that finds
// it full is raised again by a later fix.
const alertQueue = 1024

// alert is an alert to raise about an order.
type alert struct {
	kind                string // events.OrderRiderNear or events.OrderRiderArriving
	orderID, riderID    string
	distance, lat, lng  float64
	at                  time.Time
	email, restaurantID string
	onFail              func(alert)
}

// Alerts raises "your rider is near" (order.rider_near: the rider, carrying
// the order, first comes within nearMeters of the delivery address) and
// "rider arriving" (order.rider_arriving: the rider first comes within
// nearMeters of the restaurant before picking the order up), each once per
// order: the event goes into the outbox in the transaction that inserts the
// order's row in tracking_alerts, whose key refuses a second, so the alert
// is published once however many instances see the rider come near, and
// across their restarts. The outbox relay (the orders or payment
// service's) publishes it; the order feed brings rider_near to the order's
// customers on every instance.
type Alerts struct {
	db         *pgxpool.Pool
	nearMeters float64
	log        *zap.Logger
	warn       rate.Sometimes
	queue      chan alert

	// Raised counts alerts written to the outbox; Repeated, alerts another
	// instance (or this one before a restart) had raised already.
	Raised, Repeated, Failed atomic.Int64
}

// NewAlerts returns alerts written to db.
func NewAlerts(db *pgxpool.Pool, nearMeters float64, log *zap.Logger) *Alerts {
	return &Alerts{db: db, nearMeters: nearMeters, log: log.With(zap.String("component", "alerts")),
		warn: rate.Sometimes{Interval: 10 * time.Second}, queue: make(chan alert, alertQueue)}
}

// due returns the alert f calls for on delivery o, if any, with the
// distance that calls for it.
func (a *Alerts) due(o *delivery, f Fix) (kind string, meters float64) {
	switch {
	case !o.near && o.status == events.StatusPickedUp && o.dest != nil:
		if m := distance(f.Lat, f.Lng, o.dest.Lat, o.dest.Lng); m <= a.nearMeters {
			return events.OrderRiderNear, m
		}
	case !o.arriving && beforePickup(o.status) && o.kitchen != nil:
		if m := distance(f.Lat, f.Lng, o.kitchen.Lat, o.kitchen.Lng); m <= a.nearMeters {
			return events.OrderRiderArriving, m
		}
	}
	return "", 0
}

// beforePickup reports whether an order in status waits for its rider at
// the restaurant.
func beforePickup(status string) bool {
	return status == events.StatusPlaced || status == events.StatusPaid || status == events.StatusAccepted
}

// alerted and setAlerted read and mark an order's alert of kind.
func alerted(o *delivery, kind string) bool {
	if kind == events.OrderRiderNear {
		return o.near
	}
	return o.arriving
}

func setAlerted(o *delivery, kind string, v bool) {
	if kind == events.OrderRiderNear {
		o.near = v
	} else {
		o.arriving = v
	}
}

// raise queues al for writing; onFail is called if writing it fails. It
// reports false when the queue is full.
func (a *Alerts) raise(al alert, onFail func(alert)) bool {
	al.onFail = onFail
	select {
	case a.queue <- al:
		return true
	default:
		return false
	}
}

// Run writes queued alerts until ctx is done.
func (a *Alerts) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case al := <-a.queue:
			if err := a.write(ctx, al); err != nil {
				a.Failed.Add(1)
				a.warn.Do(func() {
					a.log.Warn("alert not raised; a later fix will try again", zap.String("kind", al.kind), zap.Error(err))
				})
				al.onFail(al)
			}
		}
	}
}

// write raises al once: its row and its event in one transaction.
func (a *Alerts) write(ctx context.Context, al alert) error {
	var data any = events.RiderArriving{RiderID: al.riderID, RestaurantID: al.restaurantID, DistanceM: round1(al.distance)}
	if al.kind == events.OrderRiderNear {
		data = events.RiderNear{RiderID: al.riderID, DistanceM: round1(al.distance), Lat: al.lat, Lng: al.lng, Email: al.email,
			RestaurantID: al.restaurantID}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raised := false
	err := pgx.BeginFunc(wctx, a.db, func(tx pgx.Tx) error {
		err := tx.QueryRow(wctx, `INSERT INTO tracking_alerts (order_id, kind, rider_id, distance_m, at) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (order_id, kind) DO NOTHING RETURNING true`, al.orderID, al.kind, al.riderID, al.distance, al.at).Scan(&raised)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // raised before
		}
		if err != nil {
			return fmt.Errorf("record alert: %w", err)
		}
		_, err = outbox.Enqueue(wctx, tx, al.kind, al.orderID, al.at, data)
		return err
	})
	if err != nil {
		return err
	}
	if !raised {
		a.Repeated.Add(1)
		return nil
	}
	a.Raised.Add(1)
	a.log.Info("alert raised", zap.String("kind", al.kind), zap.String("order_id", al.orderID), zap.String("rider_id", al.riderID),
		zap.Float64("distance_m", round1(al.distance)))
	return nil
}

// distance is the great-circle distance in metres between two points
// (haversine): exact to well under a metre over a city.
func distance(lat1, lng1, lat2, lng2 float64) float64 {
	const earth = 6_371_000.0
	rad := math.Pi / 180
	dLat, dLng := (lat2-lat1)*rad, (lng2-lng1)*rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLng/2)*math.Sin(dLng/2)
	return 2 * earth * math.Asin(math.Sqrt(min(1, h)))
}

func round1(m float64) float64 { return math.Round(m*10) / 10 }
