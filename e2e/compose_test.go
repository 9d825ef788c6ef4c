package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dabba/dabba/shared/stack"
)

// TestComposeFileIsValid checks compose.yaml with docker-compose's own
// loader (no engine needed) and that it runs every service of the stack,
// each with a healthcheck.
func TestComposeFileIsValid(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("docker-compose is not installed (.ci/run installs it): apt-get install docker-compose")
	}
	out, err := exec.Command(bin, "-f", filepath.Join("..", "compose.yaml"), "config").CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	cfg := string(out)
	for _, svc := range append(stack.Services(ports), stack.Service{Name: "rabbitmq"}, stack.Service{Name: "postgres"}) {
		block, ok := serviceBlock(cfg, svc.Name)
		if !ok {
			t.Errorf("compose.yaml has no service %s", svc.Name)
			continue
		}
		if !strings.Contains(block, "healthcheck:") {
			t.Errorf("service %s has no healthcheck", svc.Name)
		}
	}
	if strings.Contains(cfg, "0.0.0.0:15672") || strings.Contains(cfg, "- 15672:15672") {
		t.Error("the management UI is published beyond loopback")
	}
}

// serviceBlock returns the lines of one service in docker-compose config's
// normalised output (services at two spaces of indentation).
func serviceBlock(cfg, name string) (string, bool) {
	lines := strings.Split(cfg, "\n")
	for i, l := range lines {
		if l == "  "+name+":" {
			var b strings.Builder
			for _, m := range lines[i+1:] {
				if !strings.HasPrefix(m, "    ") {
					break
				}
				b.WriteString(m + "\n")
			}
			return b.String(), true
		}
	}
	return "", false
}
