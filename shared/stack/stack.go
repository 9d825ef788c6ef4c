// Package stack runs Dabba's services as child processes: make run uses it
// to start everything on one machine, and the end-to-end tests to start,
// SIGKILL and restart single services.
package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
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

// Ports are the HTTP ports of the stack's services.
type Ports struct {
	Orders, Tracking, Payment, Restaurant, Email, Analytics, Gateway, SMTPHTTP, SMTP int
}

// DefaultPorts are the ports of make run.
var DefaultPorts = Ports{Orders: 8080, Tracking: 8081, Payment: 8082, Restaurant: 8083, Email: 8084, Analytics: 8085,
	Gateway: 8090, SMTPHTTP: 8025, SMTP: 1025}

// Services lists the stack on the given ports, the fake third parties first.
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

// Build compiles the services' binaries into binDir, from the module at root.
func Build(ctx context.Context, root, binDir string, svcs []Service) error {
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

// Proc is a service running as a child process.
type Proc struct {
	Service
	bin string
	env []string
	out io.Writer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// NewProc prepares svc, whose binary is in binDir, to run with env (plus
// the service's own) and its output, prefixed with its name, written to out.
func NewProc(svc Service, binDir string, env []string, out io.Writer) *Proc {
	e := append([]string{}, env...)
	e = append(e, "HTTP_ADDR="+svc.Addr)
	keys := make([]string, 0, len(svc.Env))
	for k := range svc.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e = append(e, k+"="+svc.Env[k])
	}
	return &Proc{Service: svc, bin: filepath.Join(binDir, svc.Name), env: e, out: out}
}

// Start starts the process.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.bin)
	cmd.Env = p.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintf(p.out, "%-11s| %s\n", p.Name, sc.Text())
		}
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Running reports whether the process has been started and not yet exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL, as a crash would, and waits for the process to go.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL, 0)
}

// Stop sends SIGTERM and waits up to timeout for a graceful exit, then
// SIGKILL.
func (p *Proc) Stop(timeout time.Duration) {
	p.signal(syscall.SIGTERM, timeout)
}

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-done
}

// WaitReady polls /readyz until it answers 200, the process exits, or ctx
// is done.
func (p *Proc) WaitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + p.Addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !p.Running() {
			return fmt.Errorf("%s exited before it was ready", p.Name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", p.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stack is a set of running services.
type Stack struct {
	Procs []*Proc
}

// Start starts every service and waits until all are ready. On failure it
// stops what it started.
func Start(ctx context.Context, svcs []Service, binDir string, env []string, out io.Writer) (*Stack, error) {
	s := &Stack{}
	for _, svc := range svcs {
		p := NewProc(svc, binDir, env, out)
		if err := p.Start(); err != nil {
			s.Stop(5 * time.Second)
			return nil, err
		}
		s.Procs = append(s.Procs, p)
	}
	for _, p := range s.Procs {
		if err := p.WaitReady(ctx); err != nil {
			s.Stop(5 * time.Second)
			return nil, err
		}
	}
	return s, nil
}

// Proc returns the named service's process.
func (s *Stack) Proc(name string) *Proc {
	for _, p := range s.Procs {
		if p.Name == name {
			return p
		}
	}
	panic("stack: no service " + name)
}

// Stop stops every service gracefully, in reverse order, in parallel.
func (s *Stack) Stop(timeout time.Duration) {
	var wg sync.WaitGroup
	for i := len(s.Procs) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p *Proc) {
			defer wg.Done()
			p.Stop(timeout)
		}(s.Procs[i])
	}
	wg.Wait()
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

// Environ returns the current environment with overrides applied.
func Environ(overrides map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := overrides[k]; !ok {
			env = append(env, kv)
		}
	}
	for k, v := range overrides {
		env = append(env, k+"="+v)
	}
	return env
}
