// Package e2e drives the running Dabba stack from outside, as its clients
// and operators do: HTTP against the services, AMQP and the management API
// against RabbitMQ, SQL for the ledger, signals against the processes.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/testenv"
)

// ports keep the suite clear of a `make run` on the same machine.
var ports = stack.Ports{Orders: 18080, Tracking: 18081, Payment: 18082, Restaurant: 18083, Email: 18084, Analytics: 18085,
	Gateway: 18090, SMTPHTTP: 18025, SMTP: 11025}

// e2eSecret signs the stack's tokens, so the suite can mint every kind. It
// is as long as a production secret must be: the stack runs as in
// production, not in development mode.
const e2eSecret = "e2e-secret-of-at-least-32-bytes!!"

// e2eAdminToken opens the orders service's admin API.
const e2eAdminToken = "e2e-admin-token"

// dabba is the stack the suite runs against.
var dabba *stack.Stack

// binDir holds the suite's build of every binary.
var binDir string

// stackEnv is the environment every stack of the suite runs with.
var stackEnv = map[string]string{
	"TOKEN_SECRET":          e2eSecret,
	"ADMIN_TOKEN":           e2eAdminToken,
	"LOG_FORMAT":            "json",
	"LOG_LEVEL":             "debug", // a line per handled message (observability_test)
	"EMAIL_RATE_PER_MINUTE": "60000", // the rate limit has its own test
	"GATEWAY_LATENCY":       "5ms",
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	wd, _ := os.Getwd()
	root, err := stack.ModuleRoot(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin, err := os.MkdirTemp("", "dabba-e2e-")
	binDir = bin
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	svcs := stack.Services(ports)
	if err := stack.Build(ctx, root, bin, svcs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := postgres.EnsureDatabase(ctx, testenv.Env.DatabaseURL()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	logs, err := os.Create(filepath.Join(os.TempDir(), "dabba-e2e.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer logs.Close()
	dabba, err = stack.Start(ctx, svcs, bin, stack.Environ(stackEnv), logs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "start the stack: %v (logs in %s)\n", err, logs.Name())
		return 1
	}
	defer dabba.Stop(20 * time.Second)
	fmt.Fprintf(os.Stderr, "e2e: stack up; service logs in %s\n", logs.Name())
	code := m.Run()
	if err := secretsLogged(logs.Name()); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	return code
}

// secretsLogged fails if any service wrote a secret it was given into its
// log during the whole suite: the token secret or the broker's password.
func secretsLogged(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, secret := range []string{e2eSecret, e2eAdminToken, ":guest@"} {
		if bytes.Contains(b, []byte(secret)) {
			return fmt.Errorf("a secret (%q) appears in the service logs %s", secret, path)
		}
	}
	return nil
}
