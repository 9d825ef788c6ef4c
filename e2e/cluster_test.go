package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/testenv"
)

// rabbitCluster is a three-node RabbitMQ cluster of the test's own on this
// machine, beside the machine's broker, as RabbitMQ documents for several
// nodes on one host: its own node names, ports, data and log directories,
// configuration and plugins (only the management UI).
type rabbitCluster struct {
	dir   string
	nodes []rabbitNode
}

type rabbitNode struct {
	name       string // dabba1@localhost
	amqp, http int
}

func (n rabbitNode) url() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.amqp) }

// startCluster starts the nodes, joins the second and third to the first
// and stops them all, and removes their files, when the test ends.
func startCluster(t *testing.T) *rabbitCluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "dabba-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &rabbitCluster{dir: dir}
	t.Cleanup(c.remove)
	// The nodes run as the rabbitmq user (rabbitmq-server switches to it),
	// which must own their files.
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		t.Fatalf("rabbitmq user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	write := func(name, body string) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("enabled_plugins", "[rabbitmq_management].\n")
	for i := 1; i <= 3; i++ {
		n := rabbitNode{name: fmt.Sprintf("dabba%d@localhost", i), amqp: 5700 + i, http: 15700 + i}
		write(fmt.Sprintf("dabba%d.conf", i), fmt.Sprintf("listeners.tcp.local = 127.0.0.1:%d\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %d\n", n.amqp, n.http))
		c.nodes = append(c.nodes, n)
	}
	if err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(path, uid, gid)
	}); err != nil {
		t.Fatal(err)
	}
	for i, n := range c.nodes {
		base := filepath.Join(dir, fmt.Sprintf("dabba%d", i+1))
		start := exec.Command("rabbitmq-server", "-detached")
		start.Env = append(os.Environ(),
			"RABBITMQ_NODENAME="+n.name,
			"RABBITMQ_CONFIG_FILE="+base+".conf",
			"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
			"RABBITMQ_MNESIA_BASE="+base+"/mnesia",
			"RABBITMQ_LOG_BASE="+base+"/log",
			"RABBITMQ_PID_FILE="+base+".pid",
			fmt.Sprintf("RABBITMQ_DIST_PORT=%d", 25700+i+1),
		)
		// Its own session: the node outlives this command, and must not
		// hold the test's output open.
		start.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if out, err := start.CombinedOutput(); err != nil {
			t.Fatalf("start %s: %v\n%s", n.name, err, out)
		}
	}
	for _, n := range c.nodes {
		eventually(t, 90*time.Second, n.name+" started", func() error {
			return exec.Command("rabbitmqctl", "-n", n.name, "await_startup").Run()
		})
	}
	for _, n := range c.nodes[1:] {
		c.ctl(t, n, "stop_app")
		c.ctl(t, n, "join_cluster", c.nodes[0].name)
		c.ctl(t, n, "start_app")
	}
	return c
}

func (c *rabbitCluster) ctl(t testing.TB, n rabbitNode, args ...string) string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl -n %s %v: %v\n%s", n.name, args, err, out)
	}
	return string(out)
}

// kill SIGKILLs a node's Erlang VM, as a machine failure would.
func (c *rabbitCluster) kill(t testing.TB, i int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("dabba%d.pid", i+1)))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", c.nodes[i].name, err)
	}
}

// remove stops every node still running and deletes the cluster's files.
func (c *rabbitCluster) remove() {
	for i, n := range c.nodes {
		if exec.Command("rabbitmqctl", "-n", n.name, "stop").Run() != nil {
			if b, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("dabba%d.pid", i+1))); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	os.RemoveAll(c.dir)
}

// leaders counts, per node, the quorum queues it leads.
func (c *rabbitCluster) leaders(t testing.TB, from rabbitNode) map[string]int {
	t.Helper()
	out := c.ctl(t, from, "list_queues", "-q", "--no-table-headers", "name", "type", "leader")
	m := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == "quorum" {
			m[f[2]]++
		}
	}
	return m
}

// TestFaultClusterNodeKilled runs a whole stack of its own against a
// three-node cluster (every service given the three nodes' URLs, the work
// queues quorum queues replicated on all three), kills -9 the node that
// leads the queues and holds the services' connections while orders keep
// arriving, and holds every accepted order to the ledger: nothing
// confirmed is lost, and every service reconnects to a survivor by itself.
func TestFaultClusterNodeKilled(t *testing.T) {
	needFaults(t)
	cluster := startCluster(t)
	var urls []string
	for _, n := range cluster.nodes {
		urls = append(urls, n.url())
	}

	// Its own database, so the suite's main stack's outbox relay cannot
	// publish this stack's events to the machine's broker.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	u, err := url.Parse(testenv.Env.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/dabba_cluster"
	dbURL := u.String()
	if err := postgres.EnsureDatabase(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := postgres.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}

	clusterPorts := stack.Ports{Orders: 18280, Tracking: 18281, Payment: 18282, Restaurant: 18283, Email: 18284, Analytics: 18285,
		Gateway: 18290, SMTPHTTP: 18225, SMTP: 11225}
	env := map[string]string{"RABBITMQ_URL": strings.Join(urls, ","), "DATABASE_URL": dbURL}
	for k, v := range stackEnv {
		env[k] = v
	}
	logs, err := os.Create(filepath.Join(os.TempDir(), "dabba-e2e-cluster.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	s, err := stack.Start(ctx, stack.Services(clusterPorts), binDir, stack.Environ(env), logs)
	if err != nil {
		t.Fatalf("start the cluster's stack: %v (logs in %s)", err, logs.Name())
	}
	defer func() {
		if err := s.Stop(20 * time.Second); err != nil {
			t.Errorf("stop the cluster's stack: %v", err)
		}
	}()
	// The suite's helpers address ports, dabba and managementAPI; point
	// them at this stack and cluster while the test runs (the suite's
	// tests run one at a time).
	mainPorts, mainStack, mainAPI := ports, dabba, managementAPI
	ports, dabba = clusterPorts, s
	defer func() { ports, dabba, managementAPI = mainPorts, mainStack, mainAPI }()

	before := pids()
	t.Logf("quorum queue leaders before: %v", cluster.leaders(t, cluster.nodes[0]))
	conns := connections(t)
	load := startOrderLoad(t, "cluster", 30)
	time.Sleep(3 * time.Second)
	// The services dial the first URL first, and the queues were declared
	// there: dabba1 holds the connections and leads the queues.
	killed := time.Now()
	cluster.kill(t, 0)
	survivor := cluster.nodes[1]
	managementAPI = fmt.Sprintf("http://127.0.0.1:%d/api", survivor.http)
	eventually(t, 2*time.Minute, "every service connected to a survivor", func() error {
		if n := connections(t); n < conns {
			return fmt.Errorf("%d connections, want %d", n, conns)
		}
		return nil
	})
	t.Logf("%d connections back on the survivors %v after the kill", conns, time.Since(killed).Round(100*time.Millisecond))
	wantAllReady(t, before, time.Minute)
	time.Sleep(5 * time.Second)
	ids := load.Stop()
	t.Logf("quorum queue leaders after: %v", cluster.leaders(t, survivor))
	wantLedger(t, db, ids, 3*time.Minute, allExactlyOnce, nil)
	t.Logf("backlog drained %v after the kill", time.Since(killed).Round(100*time.Millisecond))
}

// connections counts the clients connected to the cluster.
func connections(t testing.TB) int {
	t.Helper()
	var conns []struct {
		Name string `json:"name"`
	}
	management(t, http.MethodGet, "/connections?columns=name", nil, &conns)
	return len(conns)
}
