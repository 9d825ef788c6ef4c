package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
)

// insertBatch writes a batch of events and their inbox rows in one
// statement, so in one transaction: the inbox insert returns the ids not
// seen before, and only those events are written. Events arrive as parallel
// arrays (one round trip for up to a thousand rows).
const insertBatch = `
WITH batch AS (
	SELECT * FROM unnest($2::text[], $3::text[], $4::uuid[], $5::timestamptz[], $6::text[])
		AS b (message_id, event_type, order_id, occurred_at, data)
), fresh AS (
	INSERT INTO processed_messages (consumer, message_id)
	SELECT $1, message_id FROM batch
	ON CONFLICT DO NOTHING
	RETURNING message_id
)
INSERT INTO analytics_events (message_id, event_type, order_id, occurred_at, data)
SELECT b.message_id, b.event_type, b.order_id, b.occurred_at, b.data::jsonb
FROM batch b JOIN fresh USING (message_id)
ON CONFLICT (message_id) DO NOTHING`

// handleEventBatch stores a batch of order events. The consumer acks the
// whole batch only after the statement committed. If one event is malformed
// the batch fails, and the consumer hands its messages over one by one: the
// malformed one is then dead-lettered (its error is permanent) and the rest
// are written.
func handleEventBatch(log *zap.Logger, db *pgxpool.Pool) broker.BatchHandler {
	return func(ctx context.Context, batch []broker.Delivery) error {
		n := len(batch)
		ids, types, orders := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
		times, data := make([]time.Time, 0, n), make([]string, 0, n)
		seen := make(map[string]bool, n)
		for _, d := range batch {
			e, err := events.Decode(d.Body)
			if err != nil {
				return fmt.Errorf("message %s: %w", d.MessageID, err)
			}
			if _, err := uuid.Parse(e.OrderID); err != nil {
				return fmt.Errorf("message %s: %w: order_id %q is not a UUID", d.MessageID, events.ErrMalformed, e.OrderID)
			}
			if seen[e.ID] {
				continue // the same event twice in one batch (published twice)
			}
			seen[e.ID] = true
			ids, types, orders = append(ids, e.ID), append(types, e.Type), append(orders, e.OrderID)
			times, data = append(times, e.OccurredAt), append(data, string(e.Data))
		}
		tag, err := db.Exec(ctx, insertBatch, broker.QueueAnalytics, ids, types, orders, times, data)
		if err != nil {
			err = fmt.Errorf("insert %d events: %w", len(ids), err)
			var pgErr *pgconn.PgError
			if n == 1 && errors.As(err, &pgErr) && pgErr.Code[:2] == "22" {
				// Class 22 (data exception): this event's data is valid
				// JSON that jsonb still refuses (a \u0000, say); no retry
				// can store it.
				return broker.Permanent(err)
			}
			return err
		}
		log.Debug("events recorded", zap.Int("batch", n), zap.Int64("new", tag.RowsAffected()))
		return nil
	}
}
