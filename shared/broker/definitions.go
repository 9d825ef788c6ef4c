package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	amqp "github.com/rabbitmq/amqp091-go"
)

// VHost is the virtual host every Dabba resource lives in.
const VHost = "/"

// Definitions is a RabbitMQ definitions document (what rabbitmqctl
// export_definitions and GET /api/definitions produce), restricted to what
// Dabba declares.
type Definitions struct {
	VHosts    []DefVHost    `json:"vhosts"`
	Exchanges []DefExchange `json:"exchanges"`
	Queues    []DefQueue    `json:"queues"`
	Bindings  []DefBinding  `json:"bindings"`
}

// DefVHost is a virtual host in a definitions document.
type DefVHost struct {
	Name string `json:"name"`
}

// DefExchange is an exchange in a definitions document.
type DefExchange struct {
	Name       string         `json:"name"`
	VHost      string         `json:"vhost"`
	Type       string         `json:"type"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Internal   bool           `json:"internal"`
	Arguments  map[string]any `json:"arguments"`
}

// DefQueue is a queue in a definitions document.
type DefQueue struct {
	Name       string         `json:"name"`
	VHost      string         `json:"vhost"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Arguments  map[string]any `json:"arguments"`
}

// DefBinding is a binding in a definitions document.
type DefBinding struct {
	Source          string         `json:"source"`
	VHost           string         `json:"vhost"`
	Destination     string         `json:"destination"`
	DestinationType string         `json:"destination_type"`
	RoutingKey      string         `json:"routing_key"`
	Arguments       map[string]any `json:"arguments"`
}

// Definitions returns s as a definitions document, sorted by name the way
// the broker exports them. It holds no users: credentials never go into a
// committed file (see services/rabbitmq).
func (s Spec) Definitions() Definitions {
	d := Definitions{VHosts: []DefVHost{{Name: VHost}}, Exchanges: []DefExchange{}, Queues: []DefQueue{}, Bindings: []DefBinding{}}
	for _, e := range s.Exchanges {
		d.Exchanges = append(d.Exchanges, DefExchange{Name: e.Name, VHost: VHost, Type: e.Kind, Durable: true, Arguments: args(e.Args)})
	}
	for _, q := range s.Queues {
		d.Queues = append(d.Queues, DefQueue{Name: q.Name, VHost: VHost, Durable: true, Arguments: args(q.Args)})
	}
	for _, b := range s.Bindings {
		d.Bindings = append(d.Bindings, DefBinding{Source: b.Exchange, VHost: VHost, Destination: b.Queue,
			DestinationType: "queue", RoutingKey: b.Key, Arguments: map[string]any{}})
	}
	sort.Slice(d.Exchanges, func(i, j int) bool { return d.Exchanges[i].Name < d.Exchanges[j].Name })
	sort.Slice(d.Queues, func(i, j int) bool { return d.Queues[i].Name < d.Queues[j].Name })
	sort.Slice(d.Bindings, func(i, j int) bool {
		a, b := d.Bindings[i], d.Bindings[j]
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		if a.Destination != b.Destination {
			return a.Destination < b.Destination
		}
		return a.RoutingKey < b.RoutingKey
	})
	return d
}

func args(t amqp.Table) map[string]any {
	m := map[string]any{}
	for k, v := range t {
		m[k] = v
	}
	return m
}

// DefinitionsJSON renders the topology's definitions document as the
// committed services/rabbitmq/definitions.json holds it: indented, with a
// final newline.
func DefinitionsJSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(Topology().Definitions()); err != nil {
		return nil, fmt.Errorf("encode definitions: %w", err)
	}
	return buf.Bytes(), nil
}
