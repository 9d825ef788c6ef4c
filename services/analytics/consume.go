package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
	"github.com/dabba/dabba/shared/events"
)

// newConsumer records every order event, whatever its type, as it is,
// keyed by the event id: the rows are their own inbox.
func newConsumer(log *zap.Logger, db *pgxpool.Pool) *consumer.Consumer {
	return consumer.New(broker.QueueAnalytics, db, log, consumer.OnEvery(events.RoutingKeys, record)...).EffectsKeyedByEvent()
}

// record stores a batch of events of one type with one statement; the
// events arrive as parallel arrays (one round trip for up to a thousand
// rows).
func record(ctx context.Context, tx pgx.Tx, batch []consumer.Event[json.RawMessage]) error {
	n := len(batch)
	ids, types, orders := make([]string, n), make([]string, n), make([]string, n)
	times, data := make([]time.Time, n), make([]string, n)
	for i, e := range batch {
		ids[i], types[i], orders[i], times[i], data[i] = e.ID, e.Type, e.OrderID, e.OccurredAt, string(e.Data)
	}
	_, err := tx.Exec(ctx, `INSERT INTO analytics_events (message_id, event_type, order_id, occurred_at, data)
		SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[], $5::text[]::jsonb[])
		ON CONFLICT (message_id) DO NOTHING`, ids, types, orders, times, data)
	if err != nil {
		err = fmt.Errorf("insert %d events: %w", n, err)
		var pgErr *pgconn.PgError
		if n == 1 && errors.As(err, &pgErr) && pgErr.Code[:2] == "22" {
			// Class 22 (data exception): this event's data is valid JSON
			// that jsonb still refuses (a \u0000, say); no retry can
			// store it. (In a larger batch the consumer takes the batch
			// apart first, to find which one it is.)
			return broker.Permanent(err)
		}
		return err
	}
	return nil
}
