package dlq

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dabba/dabba/shared/broker"
)

// Waiting is an event an ordered consumer holds back behind an earlier one
// of its order (shared/consumer keeps them in held_events).
type Waiting struct {
	EventID   string    `json:"event_id"`
	Type      string    `json:"type"`
	Seq       int       `json:"seq"`
	After     int       `json:"after"`
	HeldSince time.Time `json:"held_since"`
}

// WaitingFor returns, by order id, the events of orderIDs that consumer (a
// work queue's name) holds back, in each order's order: what waits behind
// a dead-lettered event until it is replayed.
func WaitingFor(ctx context.Context, db *pgxpool.Pool, consumer string, orderIDs []string) (map[string][]Waiting, error) {
	rows, err := db.Query(ctx, `SELECT order_id::text, event_id, routing_key, seq, after, held_at FROM held_events
		WHERE consumer = $1 AND order_id = ANY($2::uuid[]) ORDER BY order_id, seq`, consumer, orderIDs)
	if err != nil {
		return nil, fmt.Errorf("read held events: %w", err)
	}
	out := map[string][]Waiting{}
	var order string
	var w Waiting
	_, err = pgx.ForEachRow(rows, []any{&order, &w.EventID, &w.Type, &w.Seq, &w.After, &w.HeldSince}, func() error {
		out[order] = append(out[order], w)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read held events: %w", err)
	}
	return out, nil
}

// WaitingPage is a Page whose messages carry the later events of their
// order that their queue holds back behind them (Waiting): what
// an ordered consumer waits for until the dead message is replayed.
type WaitingPage struct {
	Page
	Messages []WaitingMessage `json:"messages"` // in place of Page.Messages
}

// WaitingMessage is a dead message and the events waiting behind it.
type WaitingMessage struct {
	Message
	Waiting []Waiting `json:"waiting,omitempty"`
}

// WaitingOrders returns the order ids of page's messages whose later events
// origin's consumer may hold back (WaitingFor looks them up): none
// when it keeps no order, or when a message's correlation id is no order
// id (it would fail the whole look-up).
func WaitingOrders(origin string, page Page) []string {
	if q, ok := broker.LookupWorkQueue(origin); !ok || !q.Ordered {
		return nil
	}
	var ids []string
	for _, m := range page.Messages {
		if id := orderKey(m.OrderID); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// WithWaiting gives each message of page the events of waiting (by order
// id, from WaitingFor) that are its order's.
func WithWaiting(page Page, waiting map[string][]Waiting) WaitingPage {
	out := WaitingPage{Page: page, Messages: make([]WaitingMessage, len(page.Messages))}
	for i, m := range page.Messages {
		out.Messages[i] = WaitingMessage{Message: m, Waiting: waiting[orderKey(m.OrderID)]}
	}
	return out
}

// orderKey is an order id as the database writes it, or "" for what is no
// order id.
func orderKey(id string) string {
	u, err := uuid.Parse(id)
	if err != nil {
		return ""
	}
	return u.String()
}
