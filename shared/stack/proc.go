package stack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a service running as a child process. It can be started again
// after it exited or was killed, which is how the end-to-end tests crash
// and revive a service.
type Proc struct {
	Service
	bin string
	env []string
	out *lockedWriter

	mu   sync.Mutex
	cmd  *exec.Cmd
	lw   *lineWriter
	done chan struct{}
	err  error // the exit status, once done is closed
}

// NewProc prepares svc, whose binary is in binDir, to run with env (plus
// HTTP_ADDR and the service's own Env, which win), its output written to
// out line by line with the service's name in front.
func NewProc(svc Service, binDir string, env []string, out io.Writer) *Proc {
	return newProc(svc, binDir, env, &lockedWriter{w: out})
}

func newProc(svc Service, binDir string, env []string, out *lockedWriter) *Proc {
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

// Binary is the path of the service's executable.
func (p *Proc) Binary() string { return p.bin }

// Start starts the process. It fails if the process is running already or
// if its HTTP address is taken.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running() {
		return fmt.Errorf("start %s: already running", p.Name)
	}
	if p.Addr != "" {
		if err := checkFree(p.Name, p.Addr); err != nil {
			return err
		}
	}
	lw := &lineWriter{name: p.Name, out: p.out}
	cmd := exec.Command(p.bin)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = lw, lw
	cmd.SysProcAttr = sysProcAttr()
	// A grandchild holding the output pipe must not keep Wait from
	// returning once the service itself is gone.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		lw.flush()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	p.cmd, p.lw, p.done, p.err = cmd, lw, done, nil
	return nil
}

// Pid is the process id of the current (or last) run, 0 before the first.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Done is closed when the current run of the process has exited. Before
// the first Start it returns a closed channel: nothing is running.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

// Running reports whether the process has been started and not yet exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running()
}

func (p *Proc) running() bool {
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
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = signalGroup(cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and waits up to timeout for a graceful exit, then
// sends SIGKILL. It returns an error when the process had to be killed or
// did not exit with status 0 (which includes having died before Stop).
func (p *Proc) Stop(timeout time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return p.exitError("had exited before stop")
	default:
	}
	_ = signalGroup(cmd.Process.Pid, syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return p.exitError("stopped")
	case <-t.C:
	}
	_ = signalGroup(cmd.Process.Pid, syscall.SIGKILL)
	<-done
	return fmt.Errorf("%s did not stop within %v of SIGTERM: killed", p.Name, timeout)
}

// Restart stops the process gracefully (SIGKILL after timeout), starts it
// again and waits until it is ready.
func (p *Proc) Restart(ctx context.Context, timeout time.Duration) error {
	if err := p.Stop(timeout); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := p.Start(); err != nil {
		return err
	}
	return p.WaitReady(ctx)
}

// exitError describes how the last run ended; nil for a clean exit.
func (p *Proc) exitError(what string) error {
	p.mu.Lock()
	err, lw := p.err, p.lw
	p.mu.Unlock()
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w%s", p.Name, what, err, lw.lastLines())
}

// WaitReady polls /readyz until it answers 200, the process exits, or ctx
// is done. Errors carry the last answer or the end of the output, which is
// usually the reason.
func (p *Proc) WaitReady(ctx context.Context) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return fmt.Errorf("%s: not started", p.Name)
	}
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		select {
		case <-done:
			if err := p.exitError("exited before it was ready"); err != nil {
				return err
			}
			return fmt.Errorf("%s exited before it was ready", p.Name)
		default:
		}
		ready, answer := p.probe(ctx, client)
		if ready {
			return nil
		}
		if answer != "" {
			last = answer
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (%s): %w", p.Name, last, ctx.Err())
		case <-done:
		case <-tick.C:
		}
	}
}

// probe asks /readyz once. When the service answered but is not ready,
// answer says what it answered; no answer at all (not listening yet) is "".
func (p *Proc) probe(ctx context.Context, client *http.Client) (ready bool, answer string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.ReadyURL(), nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, ""
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	var b strings.Builder
	_, _ = io.Copy(&b, io.LimitReader(resp.Body, 512))
	return false, fmt.Sprintf("readyz %d %s", resp.StatusCode, strings.TrimSpace(b.String()))
}
