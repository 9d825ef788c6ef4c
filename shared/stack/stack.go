// Package stack runs Dabba's services as child processes: make run uses it
// to start everything on one machine, and the end-to-end tests to start,
// SIGKILL and restart single services.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Service is one binary of the stack.
type Service struct {
	Name string // the binary's name, the base of its package path
	Pkg  string // its Go package, e.g. ./services/orders
	// Addr is the HTTP address it serves /readyz on.
	Addr string
	// Env is added to the stack's environment for this service.
	Env map[string]string
}

// ReadyURL is where the service answers whether it can do its work.
func (s Service) ReadyURL() string { return "http://" + s.Addr + "/readyz" }

// Ports are the ports of the stack's services: HTTP for each, and the fake
// mail provider's SMTP port.
type Ports struct {
	Orders, Tracking, Payment, Restaurant, Email, Analytics, Gateway, SMTPHTTP, SMTP int
}

// DefaultPorts are the ports of make run, the services' own defaults.
func DefaultPorts() Ports {
	return Ports{Orders: 8080, Tracking: 8081, Payment: 8082, Restaurant: 8083, Email: 8084, Analytics: 8085,
		Gateway: 8090, SMTPHTTP: 8025, SMTP: 1025}
}

// Services lists the stack on the given loopback ports, the fake third
// parties first, each service pointed at the others.
func Services(p Ports) []Service {
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	return []Service{
		{Name: "fakegateway", Pkg: "./services/payment/fakegateway", Addr: addr(p.Gateway)},
		{Name: "fakesmtp", Pkg: "./services/email/fakesmtp", Addr: addr(p.SMTPHTTP),
			Env: map[string]string{"SMTP_ADDR": addr(p.SMTP)}},
		{Name: "orders", Pkg: "./services/orders", Addr: addr(p.Orders)},
		{Name: "payment", Pkg: "./services/payment", Addr: addr(p.Payment),
			Env: map[string]string{"PAYMENT_GATEWAY_URL": "http://" + addr(p.Gateway)}},
		{Name: "restaurant", Pkg: "./services/restaurant", Addr: addr(p.Restaurant)},
		{Name: "email", Pkg: "./services/email", Addr: addr(p.Email), Env: map[string]string{"SMTP_ADDR": addr(p.SMTP)}},
		{Name: "analytics", Pkg: "./services/analytics", Addr: addr(p.Analytics)},
		{Name: "tracking", Pkg: "./services/tracking", Addr: addr(p.Tracking)},
	}
}

// Build compiles the services' binaries into binDir (created if need be),
// from the module at root. One go build for all shares the compilation of
// the packages they have in common.
func Build(ctx context.Context, root, binDir string, svcs []Service) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("bin dir: %w", err)
	}
	args := []string{"build", "-o", binDir + string(filepath.Separator)}
	for _, s := range svcs {
		args = append(args, s.Pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// Stack is a set of running services.
type Stack struct {
	Procs []*Proc
}

// Start starts every service and waits until all are ready. They start
// together: each declares the topology and migrates the database itself
// (both idempotent), so the order does not matter. On failure it stops
// what it started.
func Start(ctx context.Context, svcs []Service, binDir string, env []string, out io.Writer) (*Stack, error) {
	lw := &lockedWriter{w: out}
	s := &Stack{}
	for _, svc := range svcs {
		p := newProc(svc, binDir, env, lw)
		if err := p.Start(); err != nil {
			_ = s.Stop(5 * time.Second)
			return nil, err
		}
		s.Procs = append(s.Procs, p)
	}
	for _, p := range s.Procs {
		if err := p.WaitReady(ctx); err != nil {
			_ = s.Stop(5 * time.Second)
			return nil, err
		}
	}
	return s, nil
}

// Proc returns the named service's process. It panics on a name the stack
// does not have: that is a mistake in the caller, not a runtime condition.
func (s *Stack) Proc(name string) *Proc {
	for _, p := range s.Procs {
		if p.Name == name {
			return p
		}
	}
	panic("stack: no service " + name)
}

// Stop stops every service gracefully and in parallel, so the whole stack
// takes as long as its slowest drain, not the sum. It returns what went
// wrong: a service that had to be killed or did not exit cleanly.
func (s *Stack) Stop(timeout time.Duration) error {
	errs := make([]error, len(s.Procs))
	var wg sync.WaitGroup
	for i, p := range s.Procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Stop(timeout)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Wait blocks until ctx is done (and returns nil) or until one of the
// services exits by itself (and returns why). A stack with a dead member
// is not the system the user asked for, so make run stops on it.
func (s *Stack) Wait(ctx context.Context) error {
	exited := make(chan *Proc, len(s.Procs))
	stop := make(chan struct{})
	defer close(stop)
	for _, p := range s.Procs {
		done := p.Done()
		go func() {
			select {
			case <-done:
				exited <- p
			case <-stop:
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case p := <-exited:
		return p.exitError("exited")
	}
}

// ModuleRoot finds the directory holding go.mod, from dir upwards.
func ModuleRoot(dir string) (string, error) {
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above " + dir)
		}
		dir = parent
	}
}

// Environ returns the current environment with overrides applied, in a
// stable order.
func Environ(overrides map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := overrides[k]; !ok {
			env = append(env, kv)
		}
	}
	keys := make([]string, 0, len(overrides))
	for k := range overrides {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+overrides[k])
	}
	return env
}

// checkFree fails when something already listens on addr: a second make
// run, or a service left over from an earlier run. Without this check the
// new process would die on its bind while the old one answered /readyz.
//
// It tries for a second before it gives up: a process forking at the
// moment a port was last probed holds a copy of that listener until its
// exec closes it, so "in use" can be true for a moment only.
func checkFree(name, addr string) error {
	var err error
	for range 20 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("start %s: %s is in use (another make run or e2e suite going?): %w", name, addr, err)
}
