package dlq

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/dabba/dabba/shared/broker"
)

func TestParse(t *testing.T) {
	now := time.Date(2026, 11, 23, 5, 0, 0, 0, time.UTC)
	deadAt := now.Add(-90 * time.Second)
	tests := []struct {
		name string
		give amqp.Delivery
		want Message
	}{
		{
			name: "DeadLetteredByConsumer",
			give: amqp.Delivery{MessageId: "m1", CorrelationId: "o1", Type: "order.placed", RoutingKey: "email", Body: []byte(`{"a":1}`),
				Headers: amqp.Table{broker.HeaderReason: broker.ReasonPermanent, broker.HeaderError: "550 refused",
					broker.HeaderRoutingKey: "order.placed", broker.HeaderAttempt: int32(1), broker.HeaderDeadAt: deadAt.Format(time.RFC3339Nano)}},
			want: Message{ID: "m1", OrderID: "o1", Type: "order.placed", Reason: "permanent-error", Error: "550 refused", OriginQueue: "email",
				RoutingKey: "order.placed", Attempts: 1, DeadAt: deadAt, AgeSeconds: 90, Body: `{"a":1}`},
		},
		{
			name: "DeadLetteredByBrokerDeliveryLimit",
			give: amqp.Delivery{MessageId: "m2", RoutingKey: "email", Body: []byte("x"),
				Headers: amqp.Table{"x-death": []any{amqp.Table{"queue": "email", "reason": "delivery_limit", "count": int64(1),
					"exchange": "orders", "routing-keys": []any{"order.paid"}, "time": deadAt}}}},
			want: Message{ID: "m2", Reason: "delivery_limit", OriginQueue: "email", RoutingKey: "order.paid", DeadAt: deadAt, AgeSeconds: 90, Body: "x",
				Deaths: []Death{{Queue: "email", Reason: "delivery_limit", Count: 1, Exchange: "orders", RoutingKeys: []string{"order.paid"}, Time: deadAt}}},
		},
		{
			name: "RetriedThenExhausted",
			give: amqp.Delivery{MessageId: "m3", Body: []byte{0xff},
				Headers: amqp.Table{broker.HeaderReason: broker.ReasonExhausted, broker.HeaderRoutingKey: "order.paid", broker.HeaderAttempt: int32(4),
					broker.HeaderReplays: int32(2),
					"x-death":            []any{amqp.Table{"queue": "email.retry.30s", "reason": "expired", "count": int64(1), "routing-keys": []any{"email.retry.30s"}}}}},
			want: Message{ID: "m3", Reason: "retries-exhausted", OriginQueue: "email", RoutingKey: "order.paid", Attempts: 4, Replays: 2, Body: "base64:/w==",
				Deaths: []Death{{Queue: "email.retry.30s", Reason: "expired", Count: 1, RoutingKeys: []string{"email.retry.30s"}}}},
		},
		{
			name: "NothingKnown",
			give: amqp.Delivery{MessageId: "m4"},
			want: Message{ID: "m4", Reason: "unknown", OriginQueue: "email"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parse("email", tt.give, now)
			if g, w := strings.TrimSpace(dump(got)), strings.TrimSpace(dump(tt.want)); g != w {
				t.Errorf("parse =\n%s\nwant\n%s", g, w)
			}
		})
	}
}

func TestSelector(t *testing.T) {
	now := time.Now()
	old := Message{ID: "a", DeadAt: now.Add(-time.Hour)}
	fresh := Message{ID: "b", DeadAt: now.Add(-time.Second)}
	unknown := Message{ID: "c"}
	tests := []struct {
		name    string
		give    Selector
		wantErr bool
		want    []bool // matches old, fresh, unknown
	}{
		{name: "ByID", give: Selector{IDs: []string{"b", "z"}}, want: []bool{false, true, false}},
		{name: "OlderThan", give: Selector{OlderThan: 10 * time.Minute}, want: []bool{true, false, false}},
		{name: "All", give: Selector{All: true}, want: []bool{true, true, true}},
		{name: "ErrNothingChosen", give: Selector{}, wantErr: true},
		{name: "ErrTwoWays", give: Selector{All: true, IDs: []string{"a"}}, wantErr: true},
		{name: "ErrNegativeAge", give: Selector{OlderThan: -time.Minute}, wantErr: true},
		{name: "ErrEmptyID", give: Selector{IDs: []string{""}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			for i, m := range []Message{old, fresh, unknown} {
				if got := tt.give.matches(m, now); got != tt.want[i] {
					t.Errorf("matches(%s) = %v, want %v", m.ID, got, tt.want[i])
				}
			}
		})
	}
}

func TestReplayCopy(t *testing.T) {
	now := time.Now()
	d := amqp.Delivery{MessageId: "m1", CorrelationId: "o1", Type: "order.paid", ContentType: "application/json", Body: []byte("{}"),
		Timestamp: now.Add(-time.Hour), UserId: "someone",
		Headers: amqp.Table{"traceparent": "00-abc-def-01", broker.HeaderAttempt: int32(4), broker.HeaderError: "boom",
			broker.HeaderReason: broker.ReasonExhausted, broker.HeaderQueue: "email", broker.HeaderDeadAt: "x",
			broker.HeaderRoutingKey: "order.paid", "x-death": []any{}, "x-delivery-count": int64(3), broker.HeaderReplays: int32(1)}}
	m := parse("email", d, now)
	p := replayCopy(d, m, now)
	if p.MessageId != "m1" || p.CorrelationId != "o1" || p.Type != "order.paid" || string(p.Body) != "{}" ||
		p.DeliveryMode != amqp.Persistent || !p.Timestamp.Equal(d.Timestamp) || p.UserId != "" {
		t.Errorf("properties not kept: %+v", p)
	}
	for _, gone := range []string{broker.HeaderAttempt, broker.HeaderError, broker.HeaderReason, broker.HeaderQueue, broker.HeaderDeadAt, "x-death", "x-delivery-count"} {
		if _, ok := p.Headers[gone]; ok {
			t.Errorf("header %s kept", gone)
		}
	}
	if p.Headers["traceparent"] != "00-abc-def-01" || p.Headers[broker.HeaderRoutingKey] != "order.paid" || p.Headers[broker.HeaderReplays] != int32(2) {
		t.Errorf("headers %v", p.Headers)
	}
}

func TestOrigin(t *testing.T) {
	tests := []struct {
		give, want string
		wantErr    bool
	}{
		{give: "payment", want: "payment"},
		{give: "email.dlq", want: "email"},
		{give: "payment.retry.1s", wantErr: true},
		{give: "orders.unroutable", wantErr: true},
		{give: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := Origin(tt.give)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("Origin(%q) = %q, %v", tt.give, got, err)
		}
	}
}

func dump(m Message) string {
	b, _ := json.MarshalIndent(m, "", " ")
	return string(b)
}
