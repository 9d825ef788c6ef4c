package stack

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// tailLines is how much of a process's output an error quotes: enough to
// show why a service died without flooding the message.
const tailLines = 15

// maxLine caps a buffered partial line, so a child that prints megabytes
// without a newline cannot grow the buffer without bound.
const maxLine = 64 << 10

// lockedWriter serialises whole-line writes from several processes onto
// one writer, so their lines interleave but never mix.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) writeLine(prefix string, line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%-11s| %s\n", prefix, line)
}

// lineWriter is a child's stdout and stderr: it cuts the stream into
// lines, writes each with the service's name in front, and remembers the
// last few for error messages. os/exec copies into it from one goroutine.
type lineWriter struct {
	name string
	out  *lockedWriter

	mu   sync.Mutex
	buf  []byte
	tail []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLine {
		w.emit(w.buf)
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// flush writes a last line that had no newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

func (w *lineWriter) emit(line []byte) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	w.out.writeLine(w.name, line)
	w.tail = append(w.tail, string(line))
	if len(w.tail) > tailLines {
		w.tail = w.tail[len(w.tail)-tailLines:]
	}
}

// lastLines returns the remembered tail of the output, indented for an
// error message.
func (w *lineWriter) lastLines() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.tail) == 0 {
		return ""
	}
	return "\n\t" + strings.Join(w.tail, "\n\t")
}
