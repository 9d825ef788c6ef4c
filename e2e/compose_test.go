package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dabba/dabba/shared/stack"
)

// TestComposeFile loads compose.yaml with docker-compose's own loader (no
// engine needed; .ci/run installs Debian's docker-compose) and checks the
// stack it describes: every service of the local stack plus RabbitMQ and
// PostgreSQL, each with a healthcheck; the services wired to the
// containers and waiting for them to be healthy; credentials flowing from
// one variable to broker and clients alike; the UI on loopback only.
func TestComposeFile(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker-compose is not installed; .ci/run installs it")
		}
		t.Skip("docker-compose is not installed, so compose.yaml is not validated: apt-get install docker-compose (.ci/run does)")
	}
	secret := map[string]string{"TOKEN_SECRET": composeSecret}
	t.Run("Defaults", func(t *testing.T) {
		cfg := mustComposeConfig(t, bin, secret)
		checkCompose(t, cfg, "dabba", "dabba")
	})
	t.Run("CredentialsFromEnv", func(t *testing.T) {
		cfg := mustComposeConfig(t, bin, map[string]string{"RABBITMQ_DEFAULT_USER": "asha", "RABBITMQ_DEFAULT_PASS": "s3cret", "TOKEN_SECRET": composeSecret})
		checkCompose(t, cfg, "asha", "s3cret")
	})
	t.Run("Observability", func(t *testing.T) {
		checkObservability(t, mustComposeConfig(t, bin, secret))
	})
	t.Run("ErrNoTokenSecret", func(t *testing.T) {
		// No default secret: without one the file does not even load,
		// and says what to set.
		out, err := composeConfig(bin, nil)
		if err == nil || !strings.Contains(string(out), "TOKEN_SECRET") {
			t.Fatalf("docker-compose config without TOKEN_SECRET: %v\n%s", err, out)
		}
	})
	t.Run("ErrInvalidFile", func(t *testing.T) {
		// The loader really validates: a misspelt key fails it.
		bad := filepath.Join(t.TempDir(), "compose.yaml")
		if err := os.WriteFile(bad, []byte("services:\n  x:\n    image: busybox\n    helthcheck: {}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-f", bad, "config", "-q").CombinedOutput(); err == nil {
			t.Fatalf("docker-compose accepted a misspelt key:\n%s", out)
		}
	})
}

func checkCompose(t *testing.T, cfg map[string]any, user, pass string) {
	services, _ := cfg["services"].(map[string]any)
	svc := func(name string) map[string]any { m, _ := services[name].(map[string]any); return m }
	str := func(m map[string]any, path ...string) string { s, _ := lookup(m, path...).(string); return s }

	var want []string
	for _, s := range stack.Services(stack.DefaultPorts()) {
		want = append(want, s.Name)
	}
	want = append(want, "rabbitmq", "postgres")
	var got []string
	for name, c := range services {
		if profiles, _ := lookup(c, "profiles").([]any); len(profiles) > 0 {
			continue // not part of a plain `up` (checkObservability)
		}
		got = append(got, name)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("compose services %v, want %v", got, want)
	}
	for _, name := range want {
		if test, _ := lookup(svc(name), "healthcheck", "test").([]any); len(test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
	}

	rabbit := svc("rabbitmq")
	if img := str(rabbit, "image"); img != "rabbitmq:3-management" {
		t.Errorf("rabbitmq image %q", img)
	}
	if hc := fmt.Sprint(lookup(rabbit, "healthcheck", "test")); !strings.Contains(hc, "check_port_connectivity") {
		t.Errorf("rabbitmq healthcheck %s", hc)
	}
	for _, p := range publishedPorts(rabbit) {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("rabbitmq publishes %s beyond loopback", p)
		}
	}
	if ps := publishedPorts(rabbit); !slices.Contains(ps, "127.0.0.1:15672:15672") {
		t.Errorf("rabbitmq publishes %v, want the UI on 127.0.0.1:15672", ps)
	}
	if u, p := str(rabbit, "environment", "RABBITMQ_DEFAULT_USER"), str(rabbit, "environment", "RABBITMQ_DEFAULT_PASS"); u != user || p != pass {
		t.Errorf("rabbitmq credentials %s/%s, want %s/%s", u, p, user, pass)
	}
	// The topology is imported at boot, with a user from the environment
	// (boot-time import skips RabbitMQ's default user).
	vols := fmt.Sprint(lookup(rabbit, "volumes"))
	for _, mount := range []string{"services/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/20-dabba.conf:ro",
		"services/rabbitmq/definitions.json:/etc/dabba/definitions.json:ro", "services/rabbitmq/entrypoint.sh:/etc/dabba/entrypoint.sh:ro"} {
		if !strings.Contains(vols, mount) {
			t.Errorf("rabbitmq does not mount %s: %s", mount, vols)
		}
	}
	if ep := fmt.Sprint(lookup(rabbit, "entrypoint")); ep != "[sh /etc/dabba/entrypoint.sh]" {
		t.Errorf("rabbitmq entrypoint %s, want the one that writes the definitions with the user", ep)
	}
	pg := svc("postgres")
	if img := str(pg, "image"); !strings.HasPrefix(img, "postgres:16") {
		t.Errorf("postgres image %q", img)
	}
	if db := str(pg, "environment", "POSTGRES_DB"); db != "dabba" {
		t.Errorf("POSTGRES_DB %q", db)
	}
	if hc := fmt.Sprint(lookup(pg, "healthcheck", "test")); !strings.Contains(hc, "pg_isready") {
		t.Errorf("postgres healthcheck %s", hc)
	}

	fakes := map[string]bool{"fakegateway": true, "fakesmtp": true}
	for _, s := range stack.Services(stack.DefaultPorts()) {
		c := svc(s.Name)
		if c == nil {
			continue
		}
		if df := str(c, "build", "dockerfile"); df != "services/Dockerfile" {
			t.Errorf("%s built from %q, want services/Dockerfile", s.Name, df)
		}
		if pkg := "./services/" + str(c, "build", "args", "SERVICE"); pkg != s.Pkg {
			t.Errorf("%s builds %s, want %s", s.Name, pkg, s.Pkg)
		}
		if hc := fmt.Sprint(lookup(c, "healthcheck", "test")); hc != "[CMD /app healthcheck]" {
			t.Errorf("%s healthcheck %s, want the binary's own: [CMD /app healthcheck]", s.Name, hc)
		}
		_, httpPort, err := net.SplitHostPort(str(c, "environment", "HTTP_ADDR"))
		if err != nil {
			t.Errorf("%s HTTP_ADDR: %v", s.Name, err)
		}
		for _, p := range publishedPorts(c) {
			if !strings.HasSuffix(p, ":"+httpPort) {
				t.Errorf("%s publishes %s, but serves on %s", s.Name, p, httpPort)
			}
		}
		if fakes[s.Name] {
			continue
		}
		for _, dep := range []string{"postgres", "rabbitmq"} {
			if cond := str(c, "depends_on", dep, "condition"); cond != "service_healthy" {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", s.Name, dep, cond)
			}
		}
		if db := str(c, "environment", "DATABASE_URL"); !strings.Contains(db, "@postgres:5432/dabba") {
			t.Errorf("%s DATABASE_URL %q", s.Name, db)
		}
		if mq := str(c, "environment", "RABBITMQ_URL"); mq != fmt.Sprintf("amqp://%s:%s@rabbitmq:5672/", user, pass) {
			t.Errorf("%s RABBITMQ_URL %q, want the broker's own credentials", s.Name, mq)
		}
	}
	// Every service that checks tokens gets the one secret, from the
	// environment and nowhere else.
	for _, name := range []string{"orders", "tracking", "restaurant"} {
		if got := str(svc(name), "environment", "TOKEN_SECRET"); got != composeSecret {
			t.Errorf("%s TOKEN_SECRET %q, want the environment's", name, got)
		}
	}
	for name, port := range map[string]string{"orders": "8080", "tracking": "8081"} {
		if ps := publishedPorts(svc(name)); !slices.ContainsFunc(ps, func(p string) bool { return strings.HasPrefix(p, port+":") }) {
			t.Errorf("%s publishes %v, want %s", name, ps, port)
		}
	}

	// The services find their fakes where the fakes listen.
	_, gwPort, _ := net.SplitHostPort(str(svc("fakegateway"), "environment", "HTTP_ADDR"))
	if u := str(svc("payment"), "environment", "PAYMENT_GATEWAY_URL"); u != "http://fakegateway:"+gwPort {
		t.Errorf("PAYMENT_GATEWAY_URL %q, want http://fakegateway:%s", u, gwPort)
	}
	_, smtpPort, _ := net.SplitHostPort(str(svc("fakesmtp"), "environment", "SMTP_ADDR"))
	if a := str(svc("email"), "environment", "SMTP_ADDR"); a != "fakesmtp:"+smtpPort {
		t.Errorf("email SMTP_ADDR %q, want fakesmtp:%s", a, smtpPort)
	}
	for svcName, fake := range map[string]string{"payment": "fakegateway", "email": "fakesmtp"} {
		if cond := str(svc(svcName), "depends_on", fake, "condition"); cond != "service_healthy" {
			t.Errorf("%s depends on %s with condition %q, want service_healthy", svcName, fake, cond)
		}
	}
}

// TestHealthcheckSubcommand runs each binary's "healthcheck" subcommand,
// which the compose healthchecks rely on (the images have no curl),
// against the suite's running stack: it must pass against a ready service
// and fail, quickly, where nothing listens.
func TestHealthcheckSubcommand(t *testing.T) {
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	for _, p := range dabba.Procs {
		t.Run(p.Name, func(t *testing.T) {
			if out, err := healthcheck(p.Binary(), p.Addr); err != nil {
				t.Errorf("healthcheck against the running %s: %v\n%s", p.Name, err, out)
			}
			if out, err := healthcheck(p.Binary(), closed); err == nil {
				t.Errorf("healthcheck passed where nothing listens\n%s", out)
			}
		})
	}
}

func healthcheck(bin, addr string) ([]byte, error) {
	// A binary without the subcommand would start serving instead.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "healthcheck")
	// SMTP_ADDR keeps a fake SMTP server that starts anyway on loopback.
	cmd.Env = append(os.Environ(), "HTTP_ADDR="+addr, "SMTP_ADDR=127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return out, fmt.Errorf("no answer within 10s (does it know the subcommand, or did it start serving?)")
	}
	return out, err
}

// composeSecret is the TOKEN_SECRET the compose tests give.
const composeSecret = "compose-test-secret-of-32-bytes!"

// composeConfig runs docker-compose config on compose.yaml with env (the
// credential variables otherwise unset) and returns its output, or its
// error output when it fails.
func composeConfig(bin string, env map[string]string) ([]byte, error) {
	cmd := exec.Command(bin, "-f", filepath.Join("..", "compose.yaml"), "config")
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "POSTGRES_PASSWORD", "TOKEN_SECRET":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return []byte(stderr.String()), err
	}
	return out, nil
}

// mustComposeConfig returns compose.yaml as docker-compose config prints
// it: merged, interpolated with env (the credential variables otherwise
// unset) and normalised.
func mustComposeConfig(t *testing.T, bin string, env map[string]string) map[string]any {
	t.Helper()
	out, err := composeConfig(bin, env)
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	cfg, err := parseNormalizedYAML(string(out))
	if err != nil {
		t.Fatalf("parse docker-compose config output: %v\n%s", err, out)
	}
	return cfg
}

func lookup(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// publishedPorts returns a service's published ports as host_ip:published:target
// (or published:target), whichever syntax the loader printed.
func publishedPorts(svc map[string]any) []string {
	list, _ := svc["ports"].([]any)
	var out []string
	for _, p := range list {
		switch p := p.(type) {
		case string:
			out = append(out, strings.TrimSuffix(p, "/tcp"))
		case map[string]any:
			s := fmt.Sprintf("%v:%v", p["published"], p["target"])
			if ip, ok := p["host_ip"].(string); ok {
				s = ip + ":" + s
			}
			out = append(out, s)
		}
	}
	return out
}

// parseNormalizedYAML reads the YAML docker-compose config prints: block
// mappings and sequences by indentation, plain and quoted scalars, {} and
// []. It is not a YAML parser (the module has none, and a compose loader
// is far more than this test needs); it fails on anything else rather than
// guess.
func parseNormalizedYAML(s string) (map[string]any, error) {
	p := &yamlParser{}
	for _, raw := range strings.Split(s, "\n") {
		text := strings.TrimRight(raw, " \r")
		if strings.TrimSpace(text) == "" || strings.HasPrefix(strings.TrimSpace(text), "#") {
			continue
		}
		trimmed := strings.TrimLeft(text, " ")
		p.lines = append(p.lines, yamlLine{indent: len(text) - len(trimmed), text: trimmed})
	}
	m, err := p.mapping(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(p.lines) {
		return nil, fmt.Errorf("line %q: unexpected", p.lines[p.i].text)
	}
	return m, nil
}

type yamlLine struct {
	indent int
	text   string
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

func isSeqItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// splitKey splits "key: value" or "key:"; ok is false for a scalar.
func splitKey(text string) (key, rest string, ok bool) {
	if strings.HasPrefix(text, "'") || strings.HasPrefix(text, `"`) {
		end := strings.Index(text[1:], text[:1])
		if end < 0 || !strings.HasPrefix(text[end+2:], ":") {
			return "", "", false
		}
		key, err := yamlScalar(text[:end+2])
		if err != nil {
			return "", "", false
		}
		return key.(string), strings.TrimSpace(text[end+3:]), true
	}
	if k, r, found := strings.Cut(text, ": "); found {
		return k, strings.TrimSpace(r), true
	}
	if strings.HasSuffix(text, ":") {
		return strings.TrimSuffix(text, ":"), "", true
	}
	return "", "", false
}

func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	m := map[string]any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent || (l.indent == indent && isSeqItem(l.text)) {
			break
		}
		if l.indent > indent {
			return nil, fmt.Errorf("line %q: unexpected indentation", l.text)
		}
		key, rest, ok := splitKey(l.text)
		if !ok {
			return nil, fmt.Errorf("line %q: not a key", l.text)
		}
		p.i++
		if rest != "" {
			// A long plain scalar may be folded onto deeper lines.
			for p.i < len(p.lines) && p.lines[p.i].indent > indent {
				rest += " " + p.lines[p.i].text
				p.i++
			}
			v, err := yamlScalar(rest)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", key, err)
			}
			m[key] = v
			continue
		}
		var err error
		switch {
		case p.i < len(p.lines) && p.lines[p.i].indent > indent:
			if isSeqItem(p.lines[p.i].text) {
				m[key], err = p.sequence(p.lines[p.i].indent)
			} else {
				m[key], err = p.mapping(p.lines[p.i].indent)
			}
		case p.i < len(p.lines) && p.lines[p.i].indent == indent && isSeqItem(p.lines[p.i].text):
			m[key], err = p.sequence(indent) // PyYAML does not indent a sequence under its key
		default:
			m[key] = nil
		}
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (p *yamlParser) sequence(indent int) ([]any, error) {
	list := []any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && isSeqItem(p.lines[p.i].text) {
		item := strings.TrimSpace(strings.TrimPrefix(p.lines[p.i].text, "-"))
		if _, _, isKey := splitKey(item); isKey && !strings.HasPrefix(item, "'") && !strings.HasPrefix(item, `"`) {
			// "- key: value" opens a mapping whose other keys sit under it.
			p.lines[p.i] = yamlLine{indent: indent + 2, text: item}
			m, err := p.mapping(indent + 2)
			if err != nil {
				return nil, err
			}
			list = append(list, m)
			continue
		}
		v, err := yamlScalar(item)
		if err != nil {
			return nil, err
		}
		list = append(list, v)
		p.i++
	}
	return list, nil
}

func yamlScalar(s string) (any, error) {
	switch {
	case s == "{}":
		return map[string]any{}, nil
	case s == "[]":
		return []any{}, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return nil, fmt.Errorf("unterminated %s", s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case strings.HasPrefix(s, `"`):
		return strconv.Unquote(s)
	case strings.HasPrefix(s, "|") || strings.HasPrefix(s, ">") || strings.HasPrefix(s, "&") ||
		strings.HasPrefix(s, "*") || strings.HasPrefix(s, "{") || strings.HasPrefix(s, "["):
		return nil, fmt.Errorf("unsupported YAML %q", s)
	}
	return s, nil
}

func TestParseNormalizedYAML(t *testing.T) {
	in := `services:
  web:
    command:
    - sh
    - -c
    - 'echo ''hi'': there'
    environment:
      ADDR: :8080
      URL: "http://x/\u00e9"
    ports:
    - published: 8080
      target: 8080
    - 127.0.0.1:15672:15672/tcp
version: '3.9'
volumes:
  data: {}
`
	got, err := parseNormalizedYAML(in)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give []string
		want string
	}{
		{[]string{"services", "web", "command"}, "[sh -c echo 'hi': there]"},
		{[]string{"services", "web", "environment", "ADDR"}, ":8080"},
		{[]string{"services", "web", "environment", "URL"}, "http://x/é"},
		{[]string{"services", "web", "ports"}, "[map[published:8080 target:8080] 127.0.0.1:15672:15672/tcp]"},
		{[]string{"version"}, "3.9"},
		{[]string{"volumes", "data"}, "map[]"},
	}
	for _, tt := range tests {
		if v := fmt.Sprint(lookup(got, tt.give...)); v != tt.want {
			t.Errorf("%v = %s, want %s", tt.give, v, tt.want)
		}
	}
	for _, bad := range []string{"a:\n  - x\n b: y\n", "a: |\n  text\n", "a: &anchor x\n", "just a scalar\n"} {
		if _, err := parseNormalizedYAML(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

// checkObservability checks the observability profile: Prometheus and
// Grafana only under it, on loopback, with their configuration mounted from
// services/observability; Prometheus scraping every service where it
// listens and RabbitMQ's rabbitmq_prometheus plugin, which the broker
// enables; Grafana's data source being the one the dashboard names.
func checkObservability(t *testing.T, cfg map[string]any) {
	services, _ := cfg["services"].(map[string]any)
	svc := func(name string) map[string]any { m, _ := services[name].(map[string]any); return m }
	str := func(m map[string]any, path ...string) string { s, _ := lookup(m, path...).(string); return s }
	mounts := func(m map[string]any) map[string]string { // target -> source
		out := map[string]string{}
		list, _ := m["volumes"].([]any)
		for _, v := range list {
			switch v := v.(type) {
			case string:
				parts := strings.Split(v, ":")
				if len(parts) >= 2 {
					out[parts[1]] = parts[0]
				}
			case map[string]any:
				src, _ := v["source"].(string)
				dst, _ := v["target"].(string)
				out[dst] = src
			}
		}
		return out
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	wantMount := func(name, target, repoPath string) {
		t.Helper()
		src := mounts(svc(name))[target]
		if src != filepath.Join(root, repoPath) {
			t.Errorf("%s mounts %q at %s, want %s", name, src, target, repoPath)
		}
		if _, err := os.Stat(filepath.Join(root, repoPath)); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"prometheus", "grafana"} {
		c := svc(name)
		if c == nil {
			t.Fatalf("compose has no %s service", name)
		}
		if p := fmt.Sprint(c["profiles"]); p != "[observability]" {
			t.Errorf("%s profiles %s, want [observability]", name, p)
		}
		if test, _ := lookup(c, "healthcheck", "test").([]any); len(test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
		ps := publishedPorts(c)
		if len(ps) == 0 {
			t.Errorf("%s publishes no port", name)
		}
		for _, p := range ps {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %s beyond loopback", name, p)
			}
		}
	}
	wantMount("prometheus", "/etc/prometheus/prometheus.yml", "services/observability/prometheus.yml")
	wantMount("grafana", "/etc/grafana/provisioning", "services/observability/grafana/provisioning")
	wantMount("grafana", "/var/lib/grafana/dashboards", "services/observability/grafana/dashboards")
	wantMount("rabbitmq", "/etc/rabbitmq/enabled_plugins", "services/observability/rabbitmq/enabled_plugins")
	if b, err := os.ReadFile(filepath.Join(root, "services/observability/rabbitmq/enabled_plugins")); err != nil ||
		!strings.Contains(string(b), "rabbitmq_prometheus") || !strings.Contains(string(b), "rabbitmq_management") {
		t.Errorf("enabled_plugins = %q (%v), want rabbitmq_management and rabbitmq_prometheus", b, err)
	}

	scrape, err := os.ReadFile(filepath.Join(root, "services/observability/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	fakes := map[string]bool{"fakegateway": true, "fakesmtp": true}
	for _, s := range stack.Services(stack.DefaultPorts()) {
		if fakes[s.Name] {
			continue
		}
		_, port, _ := net.SplitHostPort(str(svc(s.Name), "environment", "HTTP_ADDR"))
		if target := fmt.Sprintf("%q", s.Name+":"+port); !strings.Contains(string(scrape), target) {
			t.Errorf("prometheus.yml does not scrape %s", target)
		}
	}
	if !strings.Contains(string(scrape), `"rabbitmq:15692"`) {
		t.Error("prometheus.yml does not scrape rabbitmq:15692")
	}

	ds, err := os.ReadFile(filepath.Join(root, "services/observability/grafana/provisioning/datasources/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ds), "uid: prometheus") || !strings.Contains(string(ds), "url: http://prometheus:9090") {
		t.Errorf("Grafana data source:\n%s\nwant uid prometheus at http://prometheus:9090", ds)
	}
	for _, p := range mustDashboard(t).Panels {
		for _, tg := range p.Targets {
			if p.Datasource.UID != "prometheus" || tg.Datasource.UID != "prometheus" {
				t.Errorf("panel %q uses data source %q/%q, want the provisioned prometheus", p.Title, p.Datasource.UID, tg.Datasource.UID)
			}
		}
	}
}
