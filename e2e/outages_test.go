package e2e

import (
	"os"
	"testing"
	"time"
)

// outageLength is how long each case of TestFaultOutages keeps its
// dependency down: DABBA_OUTAGE (a Go duration), 90 s unless set. Either is
// longer than the whole retry ladder (1 s + 5 s + 30 s), which an outage
// once exhausted, dead-lettering every message in flight.
func outageLength(t testing.TB) time.Duration {
	t.Helper()
	s := os.Getenv("DABBA_OUTAGE")
	if s == "" {
		return 90 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("DABBA_OUTAGE=%q: want a duration such as 90s or 10m", s)
	}
	return d
}

// TestFaultOutages takes each dependency away for outageLength while orders
// keep coming, then checks the ledger: every order paid, every effect
// exactly once, no message dead-lettered, no service restarted. Consumers
// hold what they have and take no new work while their dependency is down
// (broker.Unavailable), so an outage spends no retries.
func TestFaultOutages(t *testing.T) {
	needFaults(t)
	length := outageLength(t)
	db := mustDB(t)
	for _, tt := range []struct {
		name   string
		outage func(t *testing.T, during func())
	}{
		{"PaymentProvider", func(t *testing.T, during func()) {
			gatewayConfig(t, `{"fail_rate": 1}`) // every charge a 503
			defer gatewayConfig(t, `{"fail_rate": 0}`)
			during()
		}},
		{"SMTPRefusing451", func(t *testing.T, during func()) {
			smtpRefuse(t, 451)
			defer smtpRefuse(t, 0)
			during()
		}},
		{"Postgres", func(t *testing.T, during func()) { restartPostgres(t, during) }},
		{"Broker", func(t *testing.T, during func()) { restartBroker(t, "app", during) }},
		{"DiskAlarm", func(t *testing.T, during func()) {
			// Free disk below the limit: the broker blocks every
			// publisher. Half way, every connection is closed: the
			// services reconnect while the alarm still holds, and must
			// not stay blocked once it is cleared.
			rabbitmqctl(t, "set_disk_free_limit", "100000GB")
			defer rabbitmqctl(t, "set_disk_free_limit", "50MB")
			reset := time.AfterFunc(length/2, func() { rabbitmqctl(t, "close_all_connections", "disk alarm test") })
			defer reset.Stop()
			during()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := pids()
			load := startOrderLoad(t, "outage-"+tt.name, 10)
			time.Sleep(2 * time.Second)
			start := time.Now()
			tt.outage(t, func() { time.Sleep(length) })
			back := time.Now()
			t.Logf("%s away for %v", tt.name, back.Sub(start).Round(time.Second))
			time.Sleep(2 * time.Second)
			ids := load.Stop()
			wantAllReady(t, before, 2*time.Minute)
			// The backlog of a long outage takes a while to drain.
			wantLedger(t, db, ids, 3*time.Minute+length/2, allExactlyOnce, nil)
			t.Logf("%s: %d orders, every ledger exactly once %v after the outage", tt.name, len(ids), time.Since(back).Round(time.Second))
		})
	}
}
