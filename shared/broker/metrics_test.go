package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/metrics"
	"github.com/dabba/dabba/shared/trace"
)

// TestConsumeRecordsMetricsAndTrace runs a consumer on an instrumented
// connection through each way a message can be settled, and checks the
// counts /metrics then shows, and that a message's traceparent reaches
// the handler's context and Delivery.
func TestConsumeRecordsMetricsAndTrace(t *testing.T) {
	t.Parallel()
	c := Dial(brokerURLs(), "test-"+t.Name(), zaptest.NewLogger(t))
	t.Cleanup(func() { c.Close() })
	m := metrics.New()
	c.Instrument(m)
	q := mustTestQueue(t, c, []time.Duration{50 * time.Millisecond})
	p := NewPublisher(c, zaptest.NewLogger(t))
	defer p.Close()

	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traced := make(chan [2]string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Consume(ctx, c, ConsumerConfig{Queue: q.Name, Retry: q.Retry}, one(func(ctx context.Context, d Delivery) error {
		switch d.MessageID {
		case "ok":
			traced <- [2]string{d.TraceParent, trace.FromContext(ctx)}
			return nil
		case "poison":
			return Permanent(errors.New("cannot decode"))
		default:
			return errors.New("still down")
		}
	}), zaptest.NewLogger(t))
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	for _, id := range []string{"ok", "poison", "exhausted"} {
		msg := Message{Exchange: ExchangeOrders, RoutingKey: q.Bindings[0], MessageID: id, CorrelationID: "o-" + id, Body: []byte(`{}`)}
		if id == "ok" {
			msg.Headers = amqp.Table{trace.Header: tp}
		}
		if err := p.Publish(pctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case got := <-traced:
		if got[0] != tp || got[1] != tp {
			t.Errorf("Delivery.TraceParent %q, context %q; want %q", got[0], got[1], tp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
	waitGet(t, c, DLQ(q.Name), 10*time.Second)
	waitGet(t, c, DLQ(q.Name), 10*time.Second)

	ql := fmt.Sprintf("{queue=%q}", q.Name)
	want := []string{
		metrics.MessagesConsumed + ql + " 4", // ok, poison, exhausted twice
		metrics.MessagesAcked + ql + " 1",
		metrics.MessagesRetried + ql + " 1",
		fmt.Sprintf("%s{dependency=%q,queue=%q} 0", metrics.ConsumerWaiting, "database", q.Name),
		fmt.Sprintf("%s{queue=%q,reason=%q} 1", metrics.MessagesDeadLettered, q.Name, metrics.ReasonPermanent),
		fmt.Sprintf("%s{queue=%q,reason=%q} 1", metrics.MessagesDeadLettered, q.Name, metrics.ReasonExhausted),
		metrics.HandlerDuration + "_count" + ql + " 4",
		metrics.BrokerConnected + " 1",
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		w := httptest.NewRecorder()
		m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		var missing []string
		for _, s := range want {
			if !strings.Contains(w.Body.String(), s+"\n") {
				missing = append(missing, s)
			}
		}
		if !strings.Contains(w.Body.String(), metrics.PublishConfirmDuration+"_count ") ||
			strings.Contains(w.Body.String(), metrics.PublishConfirmDuration+"_count 0\n") {
			missing = append(missing, "a confirm latency")
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %v:\n%s", missing, w.Body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
