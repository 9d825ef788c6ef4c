package broker

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Write combining for the AMQP socket.
//
// amqp091-go writes every frame through a 4 KiB bufio.Writer but flushes it
// after every basic.publish and every ack (Channel.sendOpen, Connection.send):
// one write syscall, and one small TCP segment for the broker to read, per
// message. The library has no API to publish or ack N messages in one write,
// but it dials through Config.Dial, so the net.Conn it gets back is where a
// batching layer fits.
//
// coalesce's Write only copies the frame into a pending buffer; one writer
// goroutine sends whatever has piled up in one syscall. At low load a frame
// goes out at once (the cost is a goroutine hand-off, no timer); under load,
// the frames written while one syscall is in flight go out together in the
// next.

const (
	// coalesceLimit bounds the bytes waiting for the writer. Past it Write
	// blocks until the writer has taken them: the back-pressure a full socket
	// buffer gives, which is how RabbitMQ's TCP flow control reaches
	// publishers.
	coalesceLimit = 1 << 20
	// coalesceKeep is the largest buffer kept for reuse, so a connection that
	// had one burst does not pin two limit-sized buffers for ever.
	coalesceKeep = 64 << 10
	// closeFlushTimeout bounds how long Close tries to send what is pending.
	// The library closes the socket from its shutdown, which precedes its
	// recovery: a peer that stopped reading must not hold that up for long.
	closeFlushTimeout = time.Second
)

// coalescer is a net.Conn whose writes are combined. Read, the deadlines and
// the addresses go straight to the embedded conn; the write deadline thus
// bounds the writer's syscall, and a Write blocked on back-pressure wakes
// when that syscall fails.
type coalescer struct {
	net.Conn

	mu      sync.Mutex
	work    sync.Cond // the writer waits for bytes, or for Close
	space   sync.Cond // Writes over the limit wait for the writer to take the pending bytes
	pending []byte    // written, not yet taken by the writer
	spare   []byte    // the writer's last buffer, reused for pending
	err     error     // the first failed write; every later Write returns it
	closed  bool
	done    chan struct{} // closed when the writer goroutine has exited

	closeOnce sync.Once
	connOnce  sync.Once
	connErr   error
}

// coalesce wraps c so that frames written while a write is in flight go out
// together in the next one. It starts the writer goroutine, which exits on
// Close or on the first failed write.
func coalesce(c net.Conn) net.Conn {
	w := &coalescer{Conn: c, done: make(chan struct{})}
	w.work.L = &w.mu
	w.space.L = &w.mu
	go w.writeLoop()
	return w
}

// Write queues p for the writer and returns without waiting for the syscall.
// p is copied whole under the lock, so concurrent Writes never interleave
// (amqp091-go also serialises its own, but a frame must never be split).
func (w *coalescer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		switch {
		case w.closed:
			return 0, net.ErrClosed
		case w.err != nil:
			return 0, fmt.Errorf("coalesced write: %w", w.err)
		case len(p) == 0:
			return 0, nil
		// An empty pending buffer takes any p, so one Write larger than
		// the limit still goes through.
		case len(w.pending) == 0 || len(w.pending)+len(p) <= coalesceLimit:
			if len(w.pending) == 0 {
				w.work.Signal() // the writer only ever waits on an empty buffer
			}
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.space.Wait()
	}
}

// writeLoop sends the pending bytes, one syscall for everything that piled
// up since the last one began. Two buffers swap so the Writes fill one while
// the syscall drains the other.
func (w *coalescer) writeLoop() {
	defer close(w.done)
	w.mu.Lock()
	for {
		for len(w.pending) == 0 && !w.closed {
			w.work.Wait()
		}
		if len(w.pending) == 0 { // closed, and everything sent
			w.mu.Unlock()
			return
		}
		buf := w.pending
		w.pending, w.spare = w.spare[:0], nil
		w.space.Broadcast()
		w.mu.Unlock()

		_, err := w.Conn.Write(buf)

		w.mu.Lock()
		if err != nil {
			w.err = err
			w.pending = nil
			w.space.Broadcast()
			w.mu.Unlock()
			// amqp091-go learns of the failure at its next Write, which
			// may be a heartbeat seconds away; meanwhile publishers would
			// wait for confirms of frames that never left. Without this
			// wrapper the failed flush would have made it shut down and
			// close the socket at once, so do that here: its reader fails
			// now and recovery starts.
			_ = w.closeConn()
			return
		}
		if cap(buf) <= coalesceKeep {
			w.spare = buf
		}
	}
}

// Close sends what is pending, for at most closeFlushTimeout, then closes the
// underlying conn and waits for the writer goroutine to exit. Writes blocked
// on back-pressure return net.ErrClosed. Later calls return net.ErrClosed.
func (w *coalescer) Close() error {
	err := net.ErrClosed
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.work.Signal()
		w.space.Broadcast()
		w.mu.Unlock()

		// The deadline stops a syscall stuck on a peer that is not
		// reading; the timer covers a conn that ignores deadlines (closing
		// it then ends the syscall).
		_ = w.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		t := time.NewTimer(closeFlushTimeout)
		select {
		case <-w.done:
		case <-t.C:
		}
		t.Stop()
		err = w.closeConn()
		<-w.done
	})
	return err
}

// closeConn closes the underlying conn once, whether Close or a failed write
// gets there first.
func (w *coalescer) closeConn() error {
	w.connOnce.Do(func() { w.connErr = w.Conn.Close() })
	return w.connErr
}
