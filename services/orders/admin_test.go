package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dabba/dabba/shared/broker"
	"github.com/dabba/dabba/shared/dlq"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/testenv"
)

func adminDo(tb testing.TB, method, url, token, body string) (int, http.Header, []byte) {
	tb.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestAdminAPI(t *testing.T) {
	base := MustRun(t, map[string]string{"ADMIN_TOKEN": "s3cret-admin"})
	tests := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"ErrNoToken", "GET", "/v1/admin/dlq", "", "", 401},
		{"ErrWrongToken", "GET", "/v1/admin/dlq", "s3cret-admim", "", 401},
		{"ErrUnknownQueue", "GET", "/v1/admin/dlq/orders/messages", "s3cret-admin", "", 404},
		{"ErrRetryQueue", "POST", "/v1/admin/dlq/payment.retry.1s/replay", "s3cret-admin", `{"all":true}`, 404},
		{"ErrLimit", "GET", "/v1/admin/dlq/payment/messages?limit=0", "s3cret-admin", "", 400},
		{"ErrNothingChosen", "POST", "/v1/admin/dlq/payment/replay", "s3cret-admin", `{}`, 400},
		{"ErrTwoWays", "POST", "/v1/admin/dlq/payment/discard", "s3cret-admin", `{"all":true,"ids":["x"]}`, 400},
		{"ErrBadAge", "POST", "/v1/admin/dlq/payment/replay", "s3cret-admin", `{"older_than":"ten minutes"}`, 400},
		{"ErrUnknownField", "POST", "/v1/admin/dlq/payment/replay", "s3cret-admin", `{"id":["x"]}`, 400},
		{"MissingIDIsNoError", "POST", "/v1/admin/dlq/payment/discard", "s3cret-admin", `{"ids":["no-such-message"]}`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, b := adminDo(t, tt.method, base+tt.path, tt.token, tt.body)
			if code != tt.want {
				t.Fatalf("%d %s, want %d", code, b, tt.want)
			}
			if code >= 400 && h.Get("Content-Type") != "application/problem+json" {
				t.Errorf("content type %s", h.Get("Content-Type"))
			}
			if code == 401 && h.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	t.Run("List", func(t *testing.T) {
		code, _, b := adminDo(t, "GET", base+"/v1/admin/dlq", "s3cret-admin", "")
		var got struct {
			Queues []struct {
				Name     string `json:"name"`
				Messages *int   `json:"messages"`
			} `json:"queues"`
		}
		if err := json.Unmarshal(b, &got); code != 200 || err != nil || len(got.Queues) != len(broker.WorkQueues) {
			t.Fatalf("%d %s", code, b)
		}
		for _, q := range got.Queues {
			if !strings.HasSuffix(q.Name, ".dlq") || q.Messages == nil {
				t.Errorf("queue %+v", q)
			}
		}
	})
	t.Run("Messages", func(t *testing.T) {
		code, _, b := adminDo(t, "GET", base+"/v1/admin/dlq/restaurant-notify.dlq/messages?limit=5", "s3cret-admin", "")
		var page struct {
			Queue    string            `json:"queue"`
			Messages []json.RawMessage `json:"messages"`
		}
		if err := json.Unmarshal(b, &page); code != 200 || err != nil || page.Queue != "restaurant-notify.dlq" || page.Messages == nil || len(page.Messages) > 5 {
			t.Fatalf("%d %s", code, b)
		}
	})
}

func TestAdminAPIOff(t *testing.T) {
	base := MustRun(t)
	code, h, b := adminDo(t, "GET", base+"/v1/admin/dlq", "anything", "")
	if code != 503 || h.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(b), "ADMIN_TOKEN") {
		t.Fatalf("%d %s", code, b)
	}
}

// MustDeadMessages reads a page of dead messages with get until the
// messages ids are all on it, and returns its messages as sent, by message
// id. Whoever else looks at the DLQ meanwhile holds its messages for a
// moment (dlq.Show takes them all), so one look may miss some.
func MustDeadMessages(tb testing.TB, get func() (int, []byte), ids ...string) map[string]map[string]json.RawMessage {
	tb.Helper()
	var out map[string]map[string]json.RawMessage
	testenv.Eventually(tb, 20*time.Second, "dead messages "+strings.Join(ids, ", "), func() bool {
		code, b := get()
		var page struct {
			Messages []map[string]json.RawMessage `json:"messages"`
		}
		if err := json.Unmarshal(b, &page); code != http.StatusOK || err != nil {
			tb.Fatalf("%d %s", code, b)
		}
		out = map[string]map[string]json.RawMessage{}
		for _, m := range page.Messages {
			var id string
			_ = json.Unmarshal(m["message_id"], &id)
			out[id] = m
		}
		for _, id := range ids {
			if out[id] == nil {
				return false
			}
		}
		return true
	})
	return out
}

// TestAdminDLQWaiting: each dead message of GET /v1/admin/dlq/{queue}/messages
// comes with the events of its order that its queue holds back behind it,
// and with every field a dead message has; with the database out of reach,
// the page is served without them.
func TestAdminDLQWaiting(t *testing.T) {
	db, dbURL := testenv.MustOwnSchemaURL(t)
	conn := testenv.MustBroker(t)
	queue := broker.QueueRestaurant
	order, other := uuid.NewString(), uuid.NewString()
	dead := testenv.MustDeadLetter(t, conn, queue, order, events.OrderPlaced, 1)
	alone := testenv.MustDeadLetter(t, conn, queue, other, events.OrderPlaced, 1)
	paid := testenv.MustHold(t, db, queue, order, events.OrderPaid, 2, 1, 3*time.Minute)
	cancelled := testenv.MustHold(t, db, queue, order, events.OrderCancelled, 3, 2, time.Minute)
	testenv.MustHold(t, db, broker.QueueEmail, other, events.OrderPaid, 2, 1, time.Minute) // another queue's
	base := MustRun(t, map[string]string{"ADMIN_TOKEN": "s3cret-admin", "DATABASE_URL": dbURL})

	t.Run("OK", func(t *testing.T) {
		msgs := MustDeadMessages(t, func() (int, []byte) {
			code, _, b := adminDo(t, "GET", base+"/v1/admin/dlq/"+queue+"/messages?limit=1000", "s3cret-admin", "")
			return code, b
		}, dead, alone)
		m := msgs[dead]
		var waiting []dlq.Waiting
		if err := json.Unmarshal(m["waiting"], &waiting); err != nil || len(waiting) != 2 {
			t.Fatalf("waiting = %s", m["waiting"])
		}
		for i, want := range []dlq.Waiting{{EventID: paid, Type: events.OrderPaid, Seq: 2, After: 1}, {EventID: cancelled, Type: events.OrderCancelled, Seq: 3, After: 2}} {
			got := waiting[i]
			if held := time.Since(got.HeldSince); held < 0 || held > 10*time.Minute {
				t.Errorf("%s held for %s", got.EventID, held)
			}
			got.HeldSince = time.Time{}
			if got != want {
				t.Errorf("waiting[%d] = %+v, want %+v", i, got, want)
			}
		}
		if w, ok := msgs[alone]["waiting"]; ok {
			t.Errorf("%s (nothing held behind it) has waiting %s", alone, w)
		}
		// Every field of a dead message, as before: the rest of the
		// object is a dlq.Message, whole.
		delete(m, "waiting")
		raw, _ := json.Marshal(m)
		var dm dlq.Message
		if err := json.Unmarshal(raw, &dm); err != nil || dm.OrderID != order || dm.Reason != broker.ReasonExhausted ||
			dm.RoutingKey != events.OrderPlaced || dm.Attempts != 4 || dm.Body == "" || dm.DeadAt.IsZero() {
			t.Fatalf("message %s: %+v, %v", raw, dm, err)
		}
		again, _ := json.Marshal(dm)
		var got, want map[string]any
		_ = json.Unmarshal(raw, &got)
		_ = json.Unmarshal(again, &want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("message fields %v, want those of a dlq.Message %v", got, want)
		}
	})

	t.Run("DatabaseUnreachable", func(t *testing.T) {
		// Nothing listens on port 1: every query fails at once.
		down, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/dabba?connect_timeout=1")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(down.Close)
		core, logs := observer.New(zap.WarnLevel)
		r := chi.NewRouter()
		r.Method(http.MethodGet, "/v1/admin/dlq/{queue}/messages", handleDLQMessages(zap.New(core), conn, down))
		msgs := MustDeadMessages(t, func() (int, []byte) {
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/admin/dlq/"+queue+"/messages?limit=1000", nil))
			return rec.Code, rec.Body.Bytes()
		}, dead, alone)
		if w, ok := msgs[dead]["waiting"]; ok {
			t.Errorf("waiting %s without a database", w)
		}
		if logs.FilterMessage("dead letters shown without the events waiting behind them").Len() == 0 {
			t.Errorf("logged %v", logs.All())
		}
	})
}
