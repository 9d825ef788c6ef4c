package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Sockets counts the open WebSockets, per client IP and in all, refuses
// new ones past the limits, and closes them all when the service stops
// (http.Server.Shutdown does not know hijacked connections).
type Sockets struct {
	perIP int // 0: no limit
	max   int // 0: no limit

	mu    sync.Mutex
	open  map[*websocket.Conn]struct{}
	byIP  map[string]int
	total int
	shut  bool
}

// NewSockets returns a registry allowing perIP sockets per client address
// and max in all (0: unlimited).
func NewSockets(perIP, max int) *Sockets {
	return &Sockets{perIP: perIP, max: max, open: map[*websocket.Conn]struct{}{}, byIP: map[string]int{}}
}

// errTooManySockets refuses a socket over a limit.
var errTooManySockets = errors.New("too many open sockets")

// Reserve counts a socket about to be accepted from r's client; release
// undoes it, once, when the socket ends (or is never opened).
func (s *Sockets) Reserve(r *http.Request) (release func(), err error) {
	ip := clientIP(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut || (s.perIP > 0 && s.byIP[ip] >= s.perIP) || (s.max > 0 && s.total >= s.max) {
		return nil, errTooManySockets
	}
	s.byIP[ip]++
	s.total++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.total--
			if s.byIP[ip]--; s.byIP[ip] <= 0 {
				delete(s.byIP, ip)
			}
		})
	}, nil
}

// Track registers c so CloseAll reaches it; the returned func forgets it.
func (s *Sockets) Track(c *websocket.Conn) (forget func()) {
	s.mu.Lock()
	shut := s.shut
	if !shut {
		s.open[c] = struct{}{}
	}
	s.mu.Unlock()
	if shut {
		c.CloseNow()
	}
	return func() {
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
	}
}

// Open returns how many sockets are open.
func (s *Sockets) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// CloseAll tells every socket the service is going away (1001), so clients
// reconnect to another instance, and refuses new ones.
func (s *Sockets) CloseAll() {
	s.mu.Lock()
	s.shut = true
	conns := make([]*websocket.Conn, 0, len(s.open))
	for c := range s.open {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Close(websocket.StatusGoingAway, "server shutting down")
		}()
	}
	// Close waits up to 5 s for each peer's answer; a dead peer must not
	// hold up the shutdown that long.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		for _, c := range conns {
			c.CloseNow()
		}
	}
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// socketBufferSize sizes a customer socket's read and write buffers. The
// customer only ever sends control frames and receives messages of a few
// hundred bytes; net/http's 4 KiB buffers would double the memory an idle
// connection costs.
const socketBufferSize = 512

// socketSendBuffer caps the kernel's send buffer of a customer socket
// (Linux doubles it, and would otherwise grow it up to 4 MiB for a peer that
// stops reading). A customer receives a few hundred bytes a second, so this
// holds minutes of fixes, bounds the kernel memory a stalled customer pins,
// and lets the write timeout find a stalled customer within seconds.
const socketSendBuffer = 32 << 10

// smallBuffers makes websocket.Accept hijack the connection with small
// bufio buffers instead of net/http's, and a capped kernel send buffer.
type smallBuffers struct{ http.ResponseWriter }

// Unwrap lets http.ResponseController and websocket.Accept see through.
func (s smallBuffers) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Hijack hands over the connection with small buffers. Bytes net/http had
// already read past the request stay in front of the connection's stream.
func (s smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if tcp, ok := conn.(interface{ SetWriteBuffer(int) error }); ok {
		_ = tcp.SetWriteBuffer(socketSendBuffer) // best effort: a default buffer works too
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		conn = &prefixedConn{Conn: conn, r: io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn)}
	}
	return conn, bufio.NewReadWriter(bufio.NewReaderSize(conn, socketBufferSize), bufio.NewWriterSize(conn, socketBufferSize)), nil
}

// prefixedConn reads what was buffered before the connection itself.
type prefixedConn struct {
	net.Conn
	r io.Reader
}

// Read reads what was buffered, then the connection.
func (c *prefixedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
