// Package broker is Dabba's RabbitMQ layer: a connection that survives broker
// restarts, the topology table, a publisher with confirms and a consumer with
// manual acks, retries and dead-lettering.
package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/metrics"
)

// ParseURLs splits a comma-separated list of broker URLs, as RABBITMQ_URL may
// hold one per cluster node.
func ParseURLs(s string) []string {
	var urls []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// Conn is one AMQP connection that reconnects by itself.
//
// Recovery is amqp091-go's own (Config.Recovery): it redials forever, one
// second apart, rotating over every node in urls. Topology and consumer
// recovery are switched off on purpose: a recovered channel would receive new
// deliveries whose tags collide with those of deliveries still in flight from
// before the reset, so an ack meant for an old message could settle a new,
// unprocessed one. Instead every user of a channel runs in sessions: when
// ChannelLost fires it drops the channel, opens a new one and declares what it
// needs again. Acks of the old session then fail harmlessly (or hit a channel
// without consumers) and the broker redelivers those messages.
type Conn struct {
	urls []string
	name string
	log  *zap.Logger

	mu      sync.Mutex
	conn    *amqp.Connection
	waiting map[string]string // queue → the dependency its consumer waits for
	dialled chan struct{}     // closed once the first connection is up
	closed  atomic.Bool
	blocked atomic.Bool
	// open follows the connection's state: true from a dial or a
	// recovery until it is lost. (IsClosed alone says false while the
	// library is still trying to recover.)
	open    atomic.Bool
	stop    context.CancelFunc
	wrap    func(net.Conn) net.Conn // applied to every socket dialled, recovery's too
	baseLog *zap.Logger

	publishOnce sync.Once
	publish     *Conn // publishers' own connection, see forPublishing

	// Reconnects counts how often the connection came back after a loss.
	Reconnects atomic.Int64

	// metrics is set by Instrument before the connection is used; nil
	// records nothing.
	metrics *metrics.Set
}

// Instrument makes consumers and publishers on c record into m, and exposes
// c's reconnects and state. Call it right after Dial, before c is used.
func (c *Conn) Instrument(m *metrics.Set) {
	c.metrics = m
	m.WatchBroker(c.Reconnects.Load, c.Ready)
}

// QueueMetrics returns the counters of queue's consumer on c (nil without
// Instrument): for what a consumer counts beside broker.Consume.
func (c *Conn) QueueMetrics(queue string) *metrics.Queue { return c.metrics.Queue(queue) }

// Dial returns at once and connects in the background, retrying until the
// broker answers, so a service can start (and its HTTP API serve) while the
// broker is down. Channel waits for the connection.
func Dial(urls []string, name string, log *zap.Logger) *Conn {
	return dialWith(urls, name, log, coalesce)
}

// dialWith is Dial with the socket's wrapper as a parameter, so that tests
// and benchmarks can compare write combining with the bare socket.
func dialWith(urls []string, name string, log *zap.Logger, wrap func(net.Conn) net.Conn) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{urls: urls, name: name, log: log.With(zap.String("amqp_connection", name)), dialled: make(chan struct{}), stop: cancel,
		wrap: wrap, baseLog: log}
	go c.keepConnected(ctx)
	return c
}

func (c *Conn) keepConnected(ctx context.Context) {
	wait := 250 * time.Millisecond
	for {
		conn, err := c.dial()
		if err != nil {
			c.log.Warn("broker unreachable, retrying", zap.Error(err), zap.Duration("in", wait))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 250 * time.Millisecond
		states := make(chan *amqp.StateChanged, 8)
		conn.NotifyStateChange(states)
		go c.watchBlocked(conn.NotifyBlocked(make(chan amqp.Blocking, 4)))
		c.mu.Lock()
		c.conn = conn
		c.mu.Unlock()
		c.open.Store(true)
		select {
		case <-c.dialled:
			c.Reconnects.Add(1)
		default:
			close(c.dialled)
		}
		c.log.Info("broker connected", zap.String("remote", conn.RemoteAddr().String()))
		// Follow the library's recovery; only a final close (recovery gave
		// up, or a close we asked for) makes us dial a new connection.
		for s := range states {
			c.onState(s.To)
		}
		c.open.Store(false)
		if c.closed.Load() || ctx.Err() != nil {
			return
		}
		c.log.Warn("broker connection closed, dialling again")
	}
}

// onState follows the library's recovery of the connection. A recovered
// connection is a new one to the broker, which tells it nothing of an alarm
// raised and cleared meanwhile, and amqp091-go neither sends "unblocked"
// nor closes the blocked notifications when it recovers: a blocked flag
// from the lost connection would refuse every publish for ever. The new
// connection starts unblocked; the broker says so if it blocks it again.
func (c *Conn) onState(to amqp.LifeCycleState) {
	switch to {
	case amqp.StateReconnecting:
		c.open.Store(false)
		c.blocked.Store(false)
		c.log.Warn("broker connection lost, recovering")
	case amqp.StateOpen:
		c.open.Store(true)
		c.blocked.Store(false)
		c.Reconnects.Add(1)
		c.log.Info("broker connection recovered")
	}
}

// setWaiting records that the consumer of queue waits for dependency (""
// for none) and returns what it waited for before.
func (c *Conn) setWaiting(queue, dependency string) (was string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	was = c.waiting[queue]
	if dependency == "" {
		delete(c.waiting, queue)
	} else {
		if c.waiting == nil {
			c.waiting = map[string]string{}
		}
		c.waiting[queue] = dependency
	}
	return was
}

// Waiting returns, for each consumer on c that holds its messages while a
// dependency is down, that dependency, by queue.
func (c *Conn) Waiting() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.waiting)
}

func (c *Conn) dial() (*amqp.Connection, error) {
	if len(c.urls) == 0 {
		return nil, errors.New("no broker URL")
	}
	var hosts []string
	for _, raw := range c.urls {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("parse broker URL: %w", err)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "5672")
		}
		hosts = append(hosts, host)
	}
	var next atomic.Uint32
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(c.name)
	cfg := amqp.Config{
		Heartbeat:  5 * time.Second,
		Properties: props,
		// Each (re)dial tries the next node, so a client follows a
		// cluster's survivors when one node dies.
		Dial: func(network, _ string) (net.Conn, error) {
			var errs []error
			for range hosts {
				h := hosts[int(next.Add(1)-1)%len(hosts)]
				conn, err := net.DialTimeout(network, h, 3*time.Second)
				if err == nil {
					if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
						conn.Close()
						return nil, err
					}
					// amqp091-go flushes after every publish and
					// ack: combine those writes (coalesce.go).
					return c.wrap(conn), nil
				}
				errs = append(errs, err)
			}
			return nil, errors.Join(errs...)
		},
		Recovery: &amqp.Recovery{
			ReconnectionConfig:   &amqp.ReconnectionConfig{MaxRetryCount: math.MaxInt32, RetryInterval: time.Second},
			TopologyRecoveryMode: amqp.TopologyRecoveryDisabled,
		},
	}
	conn, err := amqp.DialConfig(c.urls[0], cfg)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", strings.Join(hosts, ","), err)
	}
	return conn, nil
}

// watchBlocked follows the broker's resource alarms: while one is raised a
// publish blocks without regard to its context, so publishers refuse instead.
func (c *Conn) watchBlocked(blockings <-chan amqp.Blocking) {
	for b := range blockings {
		c.blocked.Store(b.Active)
		if b.Active {
			c.log.Warn("broker blocks publishers", zap.String("reason", b.Reason))
		}
	}
	c.blocked.Store(false)
}

// Blocked reports whether the broker currently blocks publishers.
func (c *Conn) Blocked() bool { return c.blocked.Load() }

// LogLibrary sends amqp091-go's own log (recovery attempts, channel closes)
// to log at debug level. The library's logger is process-wide.
func LogLibrary(log *zap.Logger) {
	amqp.SetLogger(libraryLogger{log.Sugar().Named("amqp091")})
}

type libraryLogger struct{ s *zap.SugaredLogger }

func (l libraryLogger) Printf(format string, v ...any) { l.s.Debugf(format, v...) }

// Ready reports whether the connection is open right now, and so is its
// publishers' connection if it has one.
func (c *Conn) Ready() bool {
	c.mu.Lock()
	ready := c.conn != nil && !c.conn.IsClosed() && c.open.Load()
	publish := c.publish
	c.mu.Unlock()
	return ready && (publish == nil || publish.Ready())
}

// forPublishing returns the connection publishers on c use: a second
// connection to the same broker, dialled the first time one is made.
// RabbitMQ throttles a connection that publishes faster than its queues
// take (flow control) and blocks it during a resource alarm; with
// publishes on a connection of their own, neither ever stalls the
// deliveries and acks on c. It shares c's metrics.
func (c *Conn) forPublishing() *Conn {
	c.publishOnce.Do(func() {
		p := dialWith(c.urls, c.name+" (publish)", c.baseLog, c.wrap)
		p.metrics = c.metrics
		c.mu.Lock()
		c.publish = p
		c.mu.Unlock()
	})
	return c.publish
}

// Channel opens a channel, waiting while the broker is unreachable or the
// connection is recovering, until ctx is done.
func (c *Conn) Channel(ctx context.Context) (*amqp.Channel, error) {
	select {
	case <-c.dialled:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for broker: %w", ctx.Err())
	}
	for {
		if c.closed.Load() {
			return nil, amqp.ErrClosed
		}
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if !conn.IsClosed() {
			ch, err := conn.Channel()
			if err == nil {
				return ch, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for broker: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close closes the connection, and its publishers' connection, for good.
func (c *Conn) Close() error {
	c.closed.Store(true)
	c.stop()
	c.mu.Lock()
	conn, publish := c.conn, c.publish
	c.mu.Unlock()
	if publish != nil {
		publish.Close()
	}
	if conn == nil {
		return nil
	}
	return conn.Close()
}

// Release closes a channel the caller is done with. A channel closed while
// the connection is recovering makes the library's recovery fail on it for
// ever (amqp091-go v1.16's Close of a channel that is already down marks it
// closing but leaves it registered, and recovery then gives up on it and
// starts over, every time), and a channel's "lost" notification can come a
// moment before the connection counts as recovering. So Release lets a
// grace period pass, then waits until the connection has recovered (the
// library reopens every registered channel before it says so), or is gone
// for good, however long the broker stays away, before it closes ch. (It
// once gave up after 10 minutes: a broker away longer left every service
// unable to reconnect.) On an open connection closing is safe at once,
// even for a channel the broker closed alone.
func (c *Conn) Release(ch *amqp.Channel) {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		_ = ch.Close()
		return
	}
	go func() {
		time.Sleep(releaseGrace)
		for !c.closed.Load() {
			c.mu.Lock()
			replaced := c.conn != conn
			c.mu.Unlock()
			if replaced || (!conn.IsClosed() && c.open.Load()) {
				break // recovered, or gone with its channels
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = ch.Close()
	}()
}

// releaseGrace is how long Release waits before it looks at the connection.
const releaseGrace = time.Second

// ChannelLost returns a channel that is closed once ch stops being usable:
// the connection or channel went into recovery, or closed. The caller should
// then Close ch and start a new session on a new channel.
func ChannelLost(ch *amqp.Channel) <-chan struct{} {
	states := make(chan *amqp.StateChanged, 8)
	ch.NotifyStateChange(states)
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	lost := make(chan struct{})
	go func() {
		defer func() {
			close(lost)
			// Notify channels must be drained until the library closes them.
			go func() {
				for range states {
				}
			}()
			for range closes {
			}
		}()
		for {
			select {
			case s, ok := <-states:
				if !ok || s.To != amqp.StateOpen {
					return
				}
			case <-closes:
				return
			}
		}
	}()
	return lost
}
