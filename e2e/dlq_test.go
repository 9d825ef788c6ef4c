package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap/zaptest"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/stack"
	"github.com/dabba/dabba/shared/testenv"
)

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// mustCLI builds the dabba command once for the suite.
func mustCLI(t testing.TB) string {
	t.Helper()
	cliOnce.Do(func() {
		wd, _ := os.Getwd()
		root, err := stack.ModuleRoot(wd)
		if err != nil {
			cliErr = err
			return
		}
		dir, err := os.MkdirTemp("", "dabba-cli-")
		if err != nil {
			cliErr = err
			return
		}
		cliPath = filepath.Join(dir, "dabba")
		cmd := exec.Command("go", "build", "-o", cliPath, "./services/dabba")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("go build ./services/dabba: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return cliPath
}

// dabbaCLI runs the dabba command and returns its output and exit status.
func dabbaCLI(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mustCLI(t), args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("dabba %v: no answer within a minute", args)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("dabba %v: %v", args, err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// deadMessage is what dabba dlq show --json says of a message.
type deadMessage struct {
	ID         string `json:"message_id"`
	OrderID    string `json:"order_id"`
	Type       string `json:"type"`
	Reason     string `json:"reason"`
	Error      string `json:"error"`
	Origin     string `json:"origin_queue"`
	RoutingKey string `json:"routing_key"`
	Attempts   int    `json:"attempts"`
	Body       string `json:"body"`
	// Waiting are the later events of its order held back behind it.
	Waiting []struct {
		Type string `json:"type"`
		Seq  int    `json:"seq"`
	} `json:"waiting"`
}

// placedHoldingPaid says why m is not the order's dead order.placed with its
// order.paid held back behind it: what the e-mail consumer, which keeps an
// order's mails in order, does when the first is refused for good.
func (m deadMessage) placedHoldingPaid() error {
	if m.Type != "order.placed" || len(m.Waiting) != 1 || m.Waiting[0].Type != "order.paid" || m.Waiting[0].Seq != 2 {
		return fmt.Errorf("dead %s with %+v waiting, want order.placed with order.paid #2 behind it", m.Type, m.Waiting)
	}
	return nil
}

// cliDead returns the messages of queue's DLQ about orderID, by type.
func cliDead(t testing.TB, queue, orderID string) map[string]deadMessage {
	t.Helper()
	out, code := dabbaCLI(t, "dlq", "show", queue, "-n", "0", "--json")
	if code != 0 {
		t.Fatalf("dabba dlq show = %d: %s", code, out)
	}
	var page struct {
		Messages []deadMessage `json:"messages"`
	}
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		t.Fatalf("dabba dlq show --json: %v\n%s", err, out)
	}
	found := map[string]deadMessage{}
	for _, m := range page.Messages {
		if m.OrderID == orderID {
			found[m.Type] = m
		}
	}
	return found
}

// TestDeadLetterReplayCLI: the mail server refuses mail for good (550, a
// relay misconfigured, say): the order's first e-mail is dead-lettered at
// once, and its second is held back behind it (an order's mails go in
// order). The dabba command lists the dead one with the reason and the one
// waiting behind it; once the mail server is fixed, it replays it, to the
// email queue only, which releases the second, and each mail is sent
// exactly once while no other consumer sees the events again.
func TestDeadLetterReplayCLI(t *testing.T) {
	db := mustDB(t)
	smtpRefuse(t, 550)
	defer smtpRefuse(t, 0)
	o := placeOrder(t, newKey(), orderJSON("c-dlq-"+uuid.NewString(), "r-dlq", 1200))
	waitPaid(t, 20*time.Second, o.ID)

	var dead map[string]deadMessage
	eventually(t, 20*time.Second, "the order's first e-mail in email.dlq, its second behind it", func() error {
		if dead = cliDead(t, "email", o.ID); len(dead) != 1 {
			return fmt.Errorf("dead letters of the order: %v", dead)
		}
		return dead["order.placed"].placedHoldingPaid()
	})
	if m := dead["order.placed"]; m.Reason != broker.ReasonPermanent || !strings.Contains(m.Error, "550") || m.Origin != "email" ||
		m.RoutingKey != "order.placed" || m.Attempts != 1 || !strings.Contains(m.Body, o.ID) {
		t.Errorf("order.placed shown as %+v", m)
	}
	out, code := dabbaCLI(t, "dlq", "list")
	if code != 0 || !strings.Contains(out, "email.dlq") || !strings.Contains(out, "payment.dlq") {
		t.Fatalf("dabba dlq list = %d:\n%s", code, out)
	}
	out, code = dabbaCLI(t, "dlq", "show", "email.dlq", "-n", "0")
	if code != 0 || !strings.Contains(out, dead["order.placed"].ID) || !strings.Contains(out, "permanent-error") ||
		!strings.Contains(out, "waiting behind it: order.paid #2") {
		t.Fatalf("dabba dlq show = %d:\n%s", code, out)
	}
	if n := readLedger(t, db, o.ID).Emails; n != 0 {
		t.Fatalf("%d e-mails sent while the server refused", n)
	}

	smtpRefuse(t, 0) // the cause is fixed
	out, code = dabbaCLI(t, "dlq", "replay", "email", "--id", dead["order.placed"].ID)
	if code != 0 || !strings.Contains(out, "1 of 1 chosen messages replayed to email") {
		t.Fatalf("dabba dlq replay = %d:\n%s", code, out)
	}
	wantExactlyOnce(t, db, o.ID, 30*time.Second)
	var paidMails int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM emails_sent WHERE order_id = $1 AND kind = 'order.paid'", o.ID).Scan(&paidMails); err != nil {
		t.Fatal(err)
	}
	if paidMails != 1 {
		t.Errorf("%d order.paid e-mails, want 1", paidMails)
	}
	if left := cliDead(t, "email", o.ID); len(left) != 0 {
		t.Errorf("still dead after the replay: %v", left)
	}

	t.Run("ErrMissingID", func(t *testing.T) {
		out, code := dabbaCLI(t, "dlq", "replay", "email", "--id", "no-such-"+uuid.NewString())
		if code != 1 || !strings.Contains(out, "not found") {
			t.Fatalf("= %d:\n%s", code, out)
		}
	})
	t.Run("ErrUsage", func(t *testing.T) {
		for _, args := range [][]string{{"dlq", "replay", "email"}, {"dlq", "show", "nope"}, {"dlq", "replay", "email", "--all", "--older-than", "1m"}, {"frobnicate"}} {
			if out, code := dabbaCLI(t, args...); code != 2 {
				t.Errorf("dabba %v = %d, want 2:\n%s", args, code, out)
			}
		}
	})
	t.Run("ErrBrokerUnreachable", func(t *testing.T) {
		cmd := exec.Command(mustCLI(t), "dlq", "list")
		cmd.Env = append(os.Environ(), "RABBITMQ_URL=amqp://guest:guest@127.0.0.1:1/")
		out, err := cmd.CombinedOutput()
		if err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "connect to amqp://guest:xxxxx@127.0.0.1:1/") {
			t.Fatalf("%v:\n%s", err, out)
		}
	})
}

// TestDeadLetterDiscardCLI: a dead letter nobody wants is discarded, and
// only it.
func TestDeadLetterDiscardCLI(t *testing.T) {
	conn := testenv.MustBroker(t)
	pub := broker.NewPublisher(conn, zaptest.NewLogger(t))
	defer pub.Close()
	ids := []string{uuid.NewString(), uuid.NewString()}
	for _, id := range ids {
		testenv.Publish(t, pub, broker.ExchangeDLX, broker.QueuePayment, id, "", []byte(`{"junk": true}`))
	}
	out, code := dabbaCLI(t, "dlq", "discard", "payment", "--id", ids[0])
	if code != 0 || !strings.Contains(out, "1 of 1 chosen messages discarded") {
		t.Fatalf("dabba dlq discard = %d:\n%s", code, out)
	}
	eventually(t, 5*time.Second, "only the discarded message gone", func() error {
		var left []string
		for _, m := range peek(t, broker.DLQ(broker.QueuePayment)) {
			left = append(left, m.Properties.MessageID)
		}
		if slices.Contains(left, ids[0]) || !slices.Contains(left, ids[1]) {
			return fmt.Errorf("payment.dlq holds %v", left)
		}
		return nil
	})
	if out, code := dabbaCLI(t, "dlq", "discard", "payment", "--id", ids[1]); code != 0 {
		t.Fatalf("dabba dlq discard = %d:\n%s", code, out)
	}
}

// TestDeadLetterAdminAPI: the same over HTTP on the orders service, behind
// the admin token.
func TestDeadLetterAdminAPI(t *testing.T) {
	db := mustDB(t)
	admin := func(method, path, token, body string) (int, []byte) {
		h := map[string]string{"Content-Type": "application/json"}
		if token != "" {
			h["Authorization"] = "Bearer " + token
		}
		code, _, b := do(t, method, base(ports.Orders)+path, h, body)
		return code, b
	}
	for _, token := range []string{"", "not-" + e2eAdminToken} {
		if code, b := admin(http.MethodGet, "/v1/admin/dlq", token, ""); code != http.StatusUnauthorized {
			t.Fatalf("GET /v1/admin/dlq with token %q = %d %s", token, code, b)
		}
		if code, b := admin(http.MethodPost, "/v1/admin/dlq/email/replay", token, `{"all":true}`); code != http.StatusUnauthorized {
			t.Fatalf("POST replay with token %q = %d %s", token, code, b)
		}
	}

	smtpRefuse(t, 550)
	defer smtpRefuse(t, 0)
	o := placeOrder(t, newKey(), orderJSON("c-dlq-api-"+uuid.NewString(), "r-dlq", 900))
	var ids []string
	eventually(t, 30*time.Second, "the order's first e-mail in email.dlq, its second behind it", func() error {
		code, b := admin(http.MethodGet, "/v1/admin/dlq/email/messages?limit=1000", e2eAdminToken, "")
		var page struct {
			Messages []deadMessage `json:"messages"`
		}
		if code != 200 || json.Unmarshal(b, &page) != nil {
			return fmt.Errorf("messages = %d %s", code, b)
		}
		var dead []deadMessage
		for _, m := range page.Messages {
			if m.OrderID == o.ID && m.Reason == broker.ReasonPermanent {
				dead = append(dead, m)
			}
		}
		if len(dead) != 1 {
			return fmt.Errorf("%d of the order's e-mails dead", len(dead))
		}
		ids = []string{dead[0].ID}
		return dead[0].placedHoldingPaid()
	})
	code, b := admin(http.MethodGet, "/v1/admin/dlq", e2eAdminToken, "")
	var list struct {
		Queues []struct {
			Name     string `json:"name"`
			Messages int    `json:"messages"`
		} `json:"queues"`
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || !slices.ContainsFunc(list.Queues, func(q struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}) bool {
		return q.Name == "email.dlq" && q.Messages >= 1
	}) {
		t.Fatalf("GET /v1/admin/dlq = %d %s", code, b)
	}

	smtpRefuse(t, 0)
	body, _ := json.Marshal(map[string]any{"ids": ids})
	code, b = admin(http.MethodPost, "/v1/admin/dlq/email/replay", e2eAdminToken, string(body))
	var res struct {
		Moved  int   `json:"moved"`
		Failed []any `json:"failed"`
	}
	if code != 200 || json.Unmarshal(b, &res) != nil || res.Moved != 1 || len(res.Failed) != 0 {
		t.Fatalf("POST replay = %d %s", code, b)
	}
	wantExactlyOnce(t, db, o.ID, 30*time.Second)
}
