package dlq

import (
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/consumer"
)

// WaitingPage is a Page whose messages carry the later events of their
// order that their queue holds back behind them (consumer.Waiting): what
// an ordered consumer waits for until the dead message is replayed.
type WaitingPage struct {
	Page
	Messages []WaitingMessage `json:"messages"` // in place of Page.Messages
}

// WaitingMessage is a dead message and the events waiting behind it.
type WaitingMessage struct {
	Message
	Waiting []consumer.Waiting `json:"waiting,omitempty"`
}

// WaitingOrders returns the order ids of page's messages whose later events
// origin's consumer may hold back (consumer.WaitingFor looks them up): none
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
// id, from consumer.WaitingFor) that are its order's.
func WithWaiting(page Page, waiting map[string][]consumer.Waiting) WaitingPage {
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
