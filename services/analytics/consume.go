package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/postgres"
)

// handleEventBatch stores a batch of order events in two statements (the
// events and the inbox), in one transaction; the consumer acks the whole
// batch after the commit. A malformed event fails the batch, which the
// consumer then retries message by message, so only that event is
// dead-lettered.
func handleEventBatch(db *pgxpool.Pool) broker.BatchHandler {
	return func(ctx context.Context, batch []broker.Delivery) error {
		n := len(batch)
		ids, types, orders := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
		times, data := make([]time.Time, 0, n), make([]string, 0, n)
		for _, d := range batch {
			e, err := events.Decode(d.Body)
			if err != nil {
				return err
			}
			ids, types, orders = append(ids, d.MessageID), append(types, e.Type), append(orders, e.OrderID)
			times, data = append(times, e.OccurredAt), append(data, string(e.Data))
		}
		return postgres.InTx(ctx, db, func(tx pgx.Tx) error {
			// The primary key on message_id is analytics' inbox: a
			// redelivered event is skipped by ON CONFLICT.
			if _, err := tx.Exec(ctx, `INSERT INTO analytics_events (message_id, event_type, order_id, occurred_at, data)
				SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[], $5::jsonb[])
				ON CONFLICT (message_id) DO NOTHING`, ids, types, orders, times, data); err != nil {
				return fmt.Errorf("insert events: %w", err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO processed_messages (consumer, message_id)
				SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, broker.QueueAnalytics, ids); err != nil {
				return fmt.Errorf("record processed messages: %w", err)
			}
			return nil
		})
	}
}
