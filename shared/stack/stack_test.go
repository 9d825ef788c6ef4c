package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// helperBin is the directory holding the helper binary (testdata/helper),
// built once for the package's tests.
var helperBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "stack-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	wd, _ := os.Getwd()
	root, err := ModuleRoot(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	helperBin = filepath.Join(dir, "bin") // Build must create it
	if err := Build(ctx, root, helperBin, []Service{{Name: "helper", Pkg: "./shared/stack/testdata/helper"}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// syncBuffer is a bytes.Buffer safe for the writes of several processes
// and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nextPort hands out the tests' ports: in sequence, so parallel tests never
// get the same one, and below Linux's ephemeral range (32768 up), which
// the kernel hands out for ":0" and outgoing connections at any moment.
var nextPort atomic.Int32

// freeAddr returns a loopback address free right now.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	nextPort.CompareAndSwap(0, int32(20000+rand.IntN(10000)))
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", nextPort.Add(1))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	tb.Fatal("no free port")
	return ""
}

// mustHelper prepares a helper process in the given mode; it is stopped
// (hard) when the test ends, whatever the test did with it.
func mustHelper(tb testing.TB, mode string, out *syncBuffer) *Proc {
	tb.Helper()
	svc := Service{Name: "helper", Addr: freeAddr(tb), Env: map[string]string{"HELPER_MODE": mode}}
	p := NewProc(svc, helperBin, []string{"HELPER_GREETING=namaste", "HELPER_MODE=overridden"}, out)
	tb.Cleanup(p.Kill)
	return p
}

func waitCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func TestProc(t *testing.T) {
	t.Parallel()
	t.Run("OK", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "ready", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitReady(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
		if !p.Running() {
			t.Fatal("not running after ready")
		}
		if err := p.Stop(20 * time.Second); err != nil {
			t.Fatalf("graceful stop: %v", err)
		}
		if p.Running() {
			t.Fatal("running after stop")
		}
		got := out.String()
		// The service's own Env wins over the stack's; the stack's reaches it.
		for _, want := range []string{"helper     | listening on " + p.Addr + `, greeting "namaste"`, "helper     | got SIGTERM, draining"} {
			if !strings.Contains(got, want+"\n") {
				t.Errorf("output lacks %q:\n%s", want, got)
			}
		}
	})
	t.Run("ErrExitsBeforeReady", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "exit", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		err := p.WaitReady(waitCtx(t))
		if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "cannot open database: boom") {
			t.Fatalf("WaitReady = %v, want the exit status and the last output", err)
		}
	})
	t.Run("ErrNotReadyInTime", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "notready", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		err := p.WaitReady(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "readyz 503 broker: not connected") {
			t.Fatalf("WaitReady = %v, want the deadline and the last answer", err)
		}
	})
	t.Run("ErrStopKillsStubborn", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "stubborn", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitReady(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
		err := p.Stop(200 * time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("Stop = %v, want it to report the kill", err)
		}
		if p.Running() {
			t.Fatal("running after stop")
		}
	})
	t.Run("KillAndStartAgain", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "ready", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitReady(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
		first := p.Pid()
		p.Kill()
		if p.Running() {
			t.Fatal("running after kill")
		}
		if strings.Contains(out.String(), "draining") {
			t.Fatal("a killed process drained: it got SIGTERM, not SIGKILL")
		}
		// Its port is free again at once, so it starts where it was.
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitReady(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
		if p.Pid() == first {
			t.Fatal("same pid after restart")
		}
		second := p.Pid()
		if err := p.Restart(waitCtx(t), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if p.Pid() == second || !p.Running() {
			t.Fatalf("Restart: pid %d (was %d), running %v", p.Pid(), second, p.Running())
		}
	})
	t.Run("ErrStartTwice", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		p := mustHelper(t, "ready", &out)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.Start(); err == nil || !strings.Contains(err.Error(), "already running") {
			t.Fatalf("second Start = %v", err)
		}
	})
	t.Run("ErrPortInUse", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p := NewProc(Service{Name: "helper", Addr: ln.Addr().String()}, helperBin, nil, &syncBuffer{})
		t.Cleanup(p.Kill)
		if err := p.Start(); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Start on a taken port = %v", err)
		}
		if p.Running() {
			t.Fatal("started anyway")
		}
	})
}

func TestStack(t *testing.T) {
	t.Parallel()
	t.Run("OK", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		svcs := []Service{{Name: "helper", Addr: freeAddr(t)}, {Name: "helper", Addr: freeAddr(t)}}
		s, err := Start(waitCtx(t), svcs, helperBin, []string{"HELPER_MODE=ready"}, &out)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			for _, p := range s.Procs {
				p.Kill()
			}
		})
		if got := s.Proc("helper"); got != s.Procs[0] {
			t.Fatalf("Proc(helper) = %v", got)
		}
		// Wait returns nil when its context ends with every service alive.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Wait(ctx); err != nil {
			t.Fatalf("Wait = %v", err)
		}
		// A service that dies on its own ends Wait with the reason.
		s.Procs[1].Kill()
		if err := s.Wait(context.Background()); err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("Wait after a death = %v", err)
		}
		err = s.Stop(20 * time.Second)
		if err == nil || !strings.Contains(err.Error(), "had exited before stop") {
			t.Fatalf("Stop = %v, want the killed one reported", err)
		}
		if n := strings.Count(out.String(), "got SIGTERM, draining"); n != 1 {
			t.Fatalf("%d graceful stops, want 1:\n%s", n, out.String())
		}
	})
	t.Run("ErrOneNeverReady", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		ok := Service{Name: "helper", Addr: freeAddr(t)}
		bad := Service{Name: "helper", Addr: freeAddr(t), Env: map[string]string{"HELPER_MODE": "exit"}}
		_, err := Start(waitCtx(t), []Service{ok, bad}, helperBin, nil, &out)
		if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
			t.Fatalf("Start = %v", err)
		}
		// What did start was stopped again, gracefully.
		if !strings.Contains(out.String(), "got SIGTERM, draining") {
			t.Fatalf("the healthy service was not stopped:\n%s", out.String())
		}
	})
}

func TestLineWriter(t *testing.T) {
	var out bytes.Buffer
	w := &lineWriter{name: "orders", out: &lockedWriter{w: &out}}
	for _, chunk := range []string{"first li", "ne\nsecond line\r\nthi", "rd"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	want := "orders     | first line\norders     | second line\n"
	if out.String() != want {
		t.Fatalf("before flush:\n%q\nwant\n%q", out.String(), want)
	}
	w.flush()
	want += "orders     | third\n"
	if out.String() != want {
		t.Fatalf("after flush:\n%q\nwant\n%q", out.String(), want)
	}
	for i := range 2 * tailLines {
		fmt.Fprintf(w, "line %d\n", i)
	}
	tail := w.lastLines()
	if strings.Count(tail, "\n\t") != tailLines || !strings.HasSuffix(tail, fmt.Sprintf("line %d", 2*tailLines-1)) {
		t.Fatalf("lastLines = %q", tail)
	}
}

func TestLineWriterLongLine(t *testing.T) {
	var out bytes.Buffer
	w := &lineWriter{name: "orders", out: &lockedWriter{w: &out}}
	if _, err := w.Write(bytes.Repeat([]byte("x"), maxLine+1)); err != nil {
		t.Fatal(err)
	}
	if len(w.buf) != 0 || !strings.HasPrefix(out.String(), "orders     | xxx") {
		t.Fatalf("a line longer than maxLine stayed buffered (%d bytes)", len(w.buf))
	}
}

func TestEnviron(t *testing.T) {
	t.Setenv("STACK_TEST_KEEP", "kept")
	t.Setenv("STACK_TEST_OVERRIDE", "old")
	env := Environ(map[string]string{"STACK_TEST_OVERRIDE": "new", "STACK_TEST_ADDED": "added"})
	got := map[string][]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = append(got[k], v)
	}
	for k, want := range map[string]string{"STACK_TEST_KEEP": "kept", "STACK_TEST_OVERRIDE": "new", "STACK_TEST_ADDED": "added"} {
		if len(got[k]) != 1 || got[k][0] != want {
			t.Errorf("%s = %q, want exactly %q", k, got[k], want)
		}
	}
}

// TestServices checks the stack's table against the repository: every
// package exists with a main, and no two services share a name or port.
func TestServices(t *testing.T) {
	wd, _ := os.Getwd()
	root, err := ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	names, addrs := map[string]bool{}, map[string]bool{}
	svcs := Services(DefaultPorts())
	for _, s := range svcs {
		if names[s.Name] || addrs[s.Addr] {
			t.Errorf("%s (%s) is listed twice", s.Name, s.Addr)
		}
		names[s.Name], addrs[s.Addr] = true, true
		if filepath.Base(s.Pkg) != s.Name {
			t.Errorf("%s is built from %s: go build names the binary after the package", s.Name, s.Pkg)
		}
		if _, err := os.Stat(filepath.Join(root, s.Pkg, "main.go")); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
	}
	want := []string{"fakegateway", "fakesmtp", "orders", "payment", "restaurant", "email", "analytics", "tracking"}
	if len(svcs) != len(want) {
		t.Errorf("%d services, want %d", len(svcs), len(want))
	}
	for _, n := range want {
		if !names[n] {
			t.Errorf("no service %s", n)
		}
	}
	if got := Services(DefaultPorts())[2]; got.Name != "orders" || got.Addr != "127.0.0.1:8080" {
		t.Errorf("orders = %+v, want it on the default :8080", got)
	}
}
