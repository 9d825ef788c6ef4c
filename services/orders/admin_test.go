package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/dabba/dabba/shared/broker"
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
