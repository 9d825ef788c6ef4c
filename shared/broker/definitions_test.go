package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// definitionsFile is the committed definitions file compose.yaml loads.
var definitionsFile = filepath.Join("..", "..", "services", "rabbitmq", "definitions.json")

// TestDefinitionsFileUpToDate: the committed definitions file is what the
// topology table generates (regenerate: make definitions).
func TestDefinitionsFileUpToDate(t *testing.T) {
	want, err := DefinitionsJSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(definitionsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with shared/broker's topology: run make definitions", definitionsFile)
	}
}

// TestDefinitionsCoverTopology: every queue and binding the table declares
// is in the definitions, each DLQ is bound to the dead-letter exchange with
// its work queue's name, and each queue's arguments carry the limits.
func TestDefinitionsCoverTopology(t *testing.T) {
	d := Topology().Definitions()
	queues := map[string]DefQueue{}
	for _, q := range d.Queues {
		queues[q.Name] = q
	}
	bound := map[string]bool{}
	for _, b := range d.Bindings {
		bound[b.Source+" "+b.Destination+" "+b.RoutingKey] = true
	}
	for _, wq := range WorkQueues {
		q, ok := queues[wq.Name]
		if !ok {
			t.Fatalf("no queue %s", wq.Name)
		}
		if q.Arguments["x-delivery-limit"] != DeliveryLimit || q.Arguments["x-dead-letter-exchange"] != ExchangeDLX || q.Arguments["x-queue-type"] != "quorum" {
			t.Errorf("%s arguments %v", wq.Name, q.Arguments)
		}
		if _, ok := queues[DLQ(wq.Name)]; !ok || !bound[ExchangeDLX+" "+DLQ(wq.Name)+" "+wq.Name] {
			t.Errorf("%s: DLQ missing or not bound", wq.Name)
		}
		for _, key := range wq.Bindings {
			if !bound[ExchangeOrders+" "+wq.Name+" "+key] {
				t.Errorf("%s not bound to %s", wq.Name, key)
			}
		}
		for _, delay := range wq.retry() {
			if q := queues[RetryQueue(wq.Name, delay)]; q.Arguments["x-message-ttl"] != delay.Milliseconds() {
				t.Errorf("%s: ttl %v", RetryQueue(wq.Name, delay), q.Arguments["x-message-ttl"])
			}
		}
	}
}

// TestDefinitionsMatchBroker: after the services' declaration, every
// exchange, queue (with its arguments) and binding of the committed file
// exists identically in the live broker, as its management API exports it.
func TestDefinitionsMatchBroker(t *testing.T) {
	conn := MustConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := DeclareTopology(ctx, conn); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(definitionsFile)
	if err != nil {
		t.Fatal(err)
	}
	var file Definitions
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	live := mustLiveDefinitions(t)

	exchanges := map[string]DefExchange{}
	for _, e := range live.Exchanges {
		exchanges[e.VHost+" "+e.Name] = e
	}
	for _, e := range file.Exchanges {
		if got, ok := exchanges[e.VHost+" "+e.Name]; !ok {
			t.Errorf("exchange %s is not in the broker", e.Name)
		} else if !reflect.DeepEqual(got, e) {
			t.Errorf("exchange %s: broker has\n%+v\nfile has\n%+v", e.Name, got, e)
		}
	}
	queues := map[string]DefQueue{}
	for _, q := range live.Queues {
		queues[q.VHost+" "+q.Name] = q
	}
	for _, q := range file.Queues {
		if got, ok := queues[q.VHost+" "+q.Name]; !ok {
			t.Errorf("queue %s is not in the broker", q.Name)
		} else if !reflect.DeepEqual(got, q) {
			t.Errorf("queue %s: broker has\n%+v\nfile has\n%+v", q.Name, got, q)
		}
	}
	bindings := map[string]bool{}
	for _, b := range live.Bindings {
		bindings[fmt.Sprintf("%+v", b)] = true
	}
	for _, b := range file.Bindings {
		if !bindings[fmt.Sprintf("%+v", b)] {
			t.Errorf("binding %+v is not in the broker", b)
		}
	}
	if len(file.Queues) == 0 || len(file.Bindings) == 0 || len(file.Exchanges) == 0 {
		t.Fatalf("the file is empty: %d exchanges, %d queues, %d bindings", len(file.Exchanges), len(file.Queues), len(file.Bindings))
	}
}

// mustLiveDefinitions reads GET /api/definitions from the management API
// (RABBITMQ_MANAGEMENT_URL, default http://guest:guest@127.0.0.1:15672).
func mustLiveDefinitions(t *testing.T) Definitions {
	t.Helper()
	base := os.Getenv("RABBITMQ_MANAGEMENT_URL")
	if base == "" {
		base = "http://guest:guest@127.0.0.1:15672"
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(base + "/api/definitions")
	if err != nil {
		t.Fatalf("management API: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/definitions = %d", resp.StatusCode)
	}
	var d Definitions
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatalf("decode /api/definitions: %v", err)
	}
	return d
}
