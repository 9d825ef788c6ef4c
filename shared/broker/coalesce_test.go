package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// fakeConn records what the writer sends it, one entry per Write call, so a
// test can count syscalls. With gate set, each Write waits for gate to close
// (or for Close), which holds one write "in flight" while later frames pile up.
type fakeConn struct {
	gate    chan struct{}
	entered chan struct{} // receives as each Write begins, if buffered room
	fail    error         // returned by every Write

	mu      sync.Mutex
	data    bytes.Buffer
	writes  int
	closes  int
	atClose int // bytes received when Close was first called
	closed  chan struct{}
}

func newFakeConn() *fakeConn {
	return &fakeConn{entered: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (f *fakeConn) Write(p []byte) (int, error) {
	select {
	case f.entered <- struct{}{}:
	default:
	}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-f.closed:
			return 0, net.ErrClosed
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closes > 0 {
		return 0, net.ErrClosed
	}
	f.writes++
	if f.fail != nil {
		return 0, f.fail
	}
	f.data.Write(p)
	return len(p), nil
}

func (f *fakeConn) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	if f.closes > 1 {
		return net.ErrClosed
	}
	f.atClose = f.data.Len()
	close(f.closed)
	return nil
}

func (f *fakeConn) Read([]byte) (int, error)         { <-f.closed; return 0, io.EOF }
func (f *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

func (f *fakeConn) stats() (writes, closes, atClose int, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, f.closes, f.atClose, bytes.Clone(f.data.Bytes())
}

// mustExit fails the test unless w's writer goroutine has exited (or does so
// soon): the guard only turns a leak into a failure instead of a hang.
func mustExit(tb testing.TB, w net.Conn) {
	tb.Helper()
	select {
	case <-w.(*coalescer).done:
	case <-time.After(10 * time.Second):
		tb.Fatal("writer goroutine did not exit")
	}
}

// frame encodes writer id's frame number seq: a header, then a body whose
// length and bytes both depend on (id, seq), so a torn or misplaced frame
// cannot parse as a valid one.
func frame(id, seq int) []byte {
	n := (id*7919 + seq*31) % 700
	b := make([]byte, 7+n)
	b[0] = byte(id)
	binary.BigEndian.PutUint32(b[1:], uint32(seq))
	binary.BigEndian.PutUint16(b[5:], uint16(n))
	for i := range n {
		b[7+i] = byte(id + seq + i)
	}
	return b
}

func TestCoalesceConcurrentWritersKeepFrames(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	w := coalesce(raw)

	const writers, frames = 8, 2000
	var wg sync.WaitGroup
	for id := range writers {
		wg.Go(func() {
			for seq := range frames {
				if _, err := w.Write(frame(id, seq)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	closed := make(chan error, 1)
	go func() {
		wg.Wait()
		closed <- w.Close()
	}()

	// The stream must be whole frames only, each writer's in its order.
	next := make([]int, writers)
	r := io.Reader(peer)
	for total := 0; total < writers*frames; total++ {
		head := make([]byte, 7)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatalf("after %d frames: %v", total, err)
		}
		id, seq := int(head[0]), int(binary.BigEndian.Uint32(head[1:]))
		if id >= writers || seq != next[id] {
			t.Fatalf("frame %d: writer %d seq %d, want seq %d", total, id, seq, next[min(id, writers-1)])
		}
		want := frame(id, seq)
		got := make([]byte, len(want))
		copy(got, head)
		if _, err := io.ReadFull(r, got[7:]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("writer %d seq %d: frame torn", id, seq)
		}
		next[id]++
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the last frame: read %d bytes, %v; want EOF", n, err)
	}
	mustExit(t, w)
}

func TestCoalesceCombinesWritesWhileOneIsInFlight(t *testing.T) {
	f := newFakeConn()
	f.gate = make(chan struct{})
	w := coalesce(f)
	var want []byte
	scratch := make([]byte, 0, 1024)
	write := func(p []byte) {
		t.Helper()
		// Like amqp091-go's bufio.Writer, reuse (and here scribble
		// over) the buffer once Write returns: Write must have copied.
		scratch = append(scratch[:0], p...)
		if _, err := w.Write(scratch); err != nil {
			t.Fatal(err)
		}
		clear(scratch)
		want = append(want, p...)
	}
	write(frame(0, 0))
	<-f.entered // the first frame's syscall is in flight
	for seq := 1; seq < 1000; seq++ {
		write(frame(0, seq))
	}
	close(f.gate)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	mustExit(t, w)
	writes, _, _, data := f.stats()
	if !bytes.Equal(data, want) {
		t.Fatalf("sent %d bytes, want the %d written, in order", len(data), len(want))
	}
	// One for the frame in flight, one for the 999 that piled up behind it.
	if writes != 2 {
		t.Errorf("1000 frames took %d writes, want 2", writes)
	}
}

func TestCoalesceBackPressure(t *testing.T) {
	f := newFakeConn()
	f.gate = make(chan struct{})
	w := coalesce(f)
	if _, err := w.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	<-f.entered
	// An empty pending buffer takes a Write of any size...
	full := bytes.Repeat([]byte{'x'}, coalesceLimit)
	if _, err := w.Write(full); err != nil {
		t.Fatal(err)
	}
	// ...but past the limit the next one waits for the writer.
	done := make(chan error, 1)
	go func() {
		_, err := w.Write([]byte("last"))
		done <- err
	}()
	// Not a timing assertion: while the writer is stuck a correct Write can
	// never return, so this fails only on a bug (and may, rarely, miss one).
	select {
	case err := <-done:
		t.Fatalf("Write past the limit returned (%v) while the writer was stuck", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(f.gate)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write stayed blocked after the writer drained")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	mustExit(t, w)
	_, _, _, data := f.stats()
	want := append(append([]byte("first"), full...), "last"...)
	if !bytes.Equal(data, want) {
		t.Fatalf("sent %d bytes, want %d in order", len(data), len(want))
	}
}

func TestCoalesceWriteErrorSticks(t *testing.T) {
	errBoom := errors.New("boom")
	f := newFakeConn()
	f.fail = errBoom
	w := coalesce(f)
	if _, err := w.Write([]byte("lost")); err != nil {
		t.Fatalf("first Write: %v; want nil (it only queues)", err)
	}
	mustExit(t, w) // the writer stops at the failure
	for range 2 {
		if _, err := w.Write([]byte("later")); !errors.Is(err, errBoom) {
			t.Fatalf("Write after a failed write: %v, want %v", err, errBoom)
		}
	}
	// The failure closed the socket so that amqp091-go's reader notices.
	if _, closes, _, _ := f.stats(); closes != 1 {
		t.Fatalf("conn closed %d times after the failure, want 1", closes)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, closes, _, _ := f.stats(); closes != 1 {
		t.Errorf("conn closed %d times, want 1", closes)
	}
}

func TestCoalesceClose(t *testing.T) {
	t.Run("FlushesThenCloses", func(t *testing.T) {
		f := newFakeConn()
		w := coalesce(f)
		var want []byte
		for seq := range 100 {
			p := frame(1, seq)
			if _, err := w.Write(p); err != nil {
				t.Fatal(err)
			}
			want = append(want, p...)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		mustExit(t, w)
		_, closes, atClose, data := f.stats()
		if atClose != len(want) || !bytes.Equal(data, want) {
			t.Fatalf("%d bytes sent before close, %d in all; want %d", atClose, len(data), len(want))
		}
		if err := w.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v, want net.ErrClosed", err)
		}
		if _, closes2, _, _ := f.stats(); closes != 1 || closes2 != 1 {
			t.Errorf("conn closed %d then %d times, want 1", closes, closes2)
		}
		if _, err := w.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write after Close: %v, want net.ErrClosed", err)
		}
	})

	t.Run("BoundedWhenPeerStopsReading", func(t *testing.T) {
		t.Parallel()
		raw, peer := net.Pipe() // nobody reads peer: the write hangs
		defer peer.Close()
		w := coalesce(raw)
		if _, err := w.Write([]byte("stuck")); err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() { closed <- w.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close hung on a peer that does not read")
		}
		mustExit(t, w)
		if _, err := raw.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("underlying conn not closed: Write = %v", err)
		}
	})

	t.Run("ReleasesBlockedWrite", func(t *testing.T) {
		t.Parallel()
		f := newFakeConn()
		f.gate = make(chan struct{}) // never opens: only Close ends the write
		w := coalesce(f)
		if _, err := w.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		<-f.entered
		if _, err := w.Write(make([]byte, coalesceLimit)); err != nil {
			t.Fatal(err)
		}
		blocked := make(chan error, 1)
		go func() {
			_, err := w.Write([]byte("blocked"))
			blocked <- err
		}()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-blocked; !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Write: %v, want net.ErrClosed", err)
		}
		mustExit(t, w)
		if _, closes, _, _ := f.stats(); closes != 1 {
			t.Errorf("conn closed %d times, want 1", closes)
		}
	})
}

func TestCoalesceNoGoroutineLeak(t *testing.T) {
	// Every writer goroutine must exit, whichever way its conn ends.
	var ws []net.Conn
	for i := range 50 {
		raw, peer := net.Pipe()
		go func() { _, _ = io.Copy(io.Discard, peer) }()
		w := coalesce(raw)
		if _, err := w.Write(frame(i, 0)); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			// With the peer gone the next write fails, and the writer
			// exits by itself.
			peer.Close()
			_, _ = w.Write(frame(i, 1))
		} else if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		mustExit(t, w)
		_ = w.Close()
	}
}

// TestCoalescedPublishConfirmedInOrder publishes persistent messages with
// confirms through Dial's (coalesced) connection while a consumer on the same
// connection acks each delivery, so publishes and acks from several goroutines
// share the combined writes.
func TestCoalescedPublishConfirmedInOrder(t *testing.T) {
	c := MustConn(t)
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclare("test-coalesce-"+uuid.NewString()[:8], false, true, true, false, amqp.Table{"x-queue-type": "classic"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(300, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := func(i int) []byte {
		return fmt.Appendf(nil, `{"n":%d,"pad":%q}`, i, strings.Repeat("x", i%500))
	}

	const n, batch = 5000, 250
	received := make(chan error, 1)
	go func() {
		next := 0
		for d := range deliveries {
			if d.MessageId != strconv.Itoa(next) || !bytes.Equal(d.Body, body(next)) {
				received <- fmt.Errorf("delivery %d: message %s", next, d.MessageId)
				return
			}
			if err := d.Ack(false); err != nil {
				received <- fmt.Errorf("ack %d: %w", next, err)
				return
			}
			if next++; next == n {
				received <- nil
				return
			}
		}
		received <- fmt.Errorf("deliveries ended after %d of %d", next, n)
	}()

	p := NewPublisher(c, log)
	defer p.Close()
	for start := 0; start < n; start += batch {
		msgs := make([]Message, batch)
		for i := range msgs {
			id := start + i
			msgs[i] = Message{RoutingKey: q.Name, MessageID: strconv.Itoa(id), Type: "test", Body: body(id)}
		}
		acked, err := p.PublishBatch(ctx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		for i, ok := range acked {
			if !ok {
				t.Fatalf("message %d not confirmed", start+i)
			}
		}
	}
	select {
	case err := <-received:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("not every message was received")
	}
}

// countingConn counts the write syscalls made on a socket.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// BenchmarkPublishTransient publishes transient messages (rider fixes) as
// fast as one publisher, or one per goroutine, can, over the bare socket and
// over coalesce, and reports the write syscalls per message.
func BenchmarkPublishTransient(b *testing.B) {
	for _, mode := range []string{"Plain", "Coalesced"} {
		for _, parallel := range []bool{false, true} {
			name := mode
			if parallel {
				name += "/Parallel"
			}
			b.Run(name, func(b *testing.B) {
				benchmarkPublishTransient(b, mode == "Coalesced", parallel)
			})
		}
	}
}

func benchmarkPublishTransient(b *testing.B, combine, parallel bool) {
	var writes atomic.Int64
	wrap := func(c net.Conn) net.Conn {
		counted := countingConn{Conn: c, writes: &writes}
		if combine {
			return coalesce(counted)
		}
		return counted
	}
	log := zap.NewNop()
	c := dialWith(brokerURLs(), "bench-"+b.Name(), log, wrap)
	defer c.Close()
	ctx := context.Background()
	ch, err := c.Channel(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	// The queue keeps only the newest messages, like the location feed, so
	// a long run does not fill the broker's memory.
	q, err := ch.QueueDeclare("bench-coalesce-"+uuid.NewString()[:8], false, true, true, false,
		amqp.Table{"x-queue-type": "classic", "x-max-length": 10000, "x-overflow": "drop-head"})
	if err != nil {
		b.Fatal(err)
	}
	msg := Message{RoutingKey: q.Name, Type: "rider.location", Body: bytes.Repeat([]byte{'x'}, 200), Transient: true}
	publish := func(p *Publisher) {
		if err := p.Publish(ctx, msg); err != nil {
			b.Error(err)
		}
	}
	p := NewTransientPublisher(c, log)
	defer p.Close()
	publish(p) // opens the channel

	writes.Store(0)
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			p := NewTransientPublisher(c, log)
			defer p.Close()
			for pb.Next() {
				publish(p)
			}
		})
	} else {
		for range b.N {
			publish(p)
		}
	}
	// A round trip on the same socket, so that every publish has been
	// written before the clock stops.
	if _, err := ch.QueueDeclarePassive(q.Name, false, true, true, false, nil); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/op")
}
