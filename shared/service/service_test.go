package service

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServerCutsSlowClients: a client that sends a request's headers too
// slowly (slowloris) loses its connection once ReadHeaderTimeout passes,
// rather than holding it and its goroutine for ever; the whole request and
// idle keep-alive connections are bounded too.
func TestServerCutsSlowClients(t *testing.T) {
	srv := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	if srv.ReadTimeout <= 0 || srv.IdleTimeout <= 0 || srv.ReadHeaderTimeout <= 0 || srv.ReadHeaderTimeout > srv.ReadTimeout {
		t.Fatalf("timeouts: header %v, read %v, idle %v", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.IdleTimeout)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil { // and never the blank line
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(ReadHeaderTimeout + 5*time.Second))
	_, err = bufio.NewReader(c).ReadString('\n')
	if took := time.Since(start); err == nil || took < ReadHeaderTimeout-time.Second || took > ReadHeaderTimeout+4*time.Second {
		t.Fatalf("connection with half its headers: read %v after %v, want it closed after about %v", err, took, ReadHeaderTimeout)
	}
}
