package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/token"
)

// TestRiderFixReachesCustomer: an order placed and assigned through the
// orders API; its customer opens the tracking socket with the order's
// tracking token and sees the rider's fixes, posted to the tracking ingest,
// arrive through RabbitMQ.
func TestRiderFixReachesCustomer(t *testing.T) {
	o := placeOrder(t, newKey(), orderJSON("c-track-"+uuid.NewString(), "r-track", 500))
	rider := "rider-" + uuid.NewString()[:8]
	if code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+o.ID+"/rider",
		map[string]string{"Content-Type": "application/json"}, `{"rider_id":"`+rider+`"}`); code != 200 {
		t.Fatalf("assign rider = %d %s", code, b)
	}
	riderTok, err := token.NewSigner([]byte(e2eSecret)).Rider(rider, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wsURL := strings.Replace(base(ports.Tracking), "http", "ws", 1) + "/v1/orders/" + o.ID + "/track?token=" + o.TrackingToken
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The assignment reaches tracking through its queue; until then the
	// socket knows no rider, and the hub picks the rider up when it does.
	c, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if code, _, _ := do(t, http.MethodGet, base(ports.Tracking)+"/v1/orders/"+o.ID+"/track?token=wrong", nil, ""); code != 401 {
		t.Fatalf("wrong token = %d, want 401", code)
	}
	var got int64
	for seq := int64(1); got == 0; seq++ {
		body := fmt.Sprintf(`{"lat":19.03,"lng":72.85,"heading":10,"speed_kmh":18,"seq":%d,"ts":%q}`, seq, time.Now().UTC().Format(time.RFC3339Nano))
		if code, _, b := do(t, http.MethodPost, base(ports.Tracking)+"/v1/riders/"+rider+"/location",
			map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + riderTok}, body); code != 202 {
			t.Fatalf("post fix = %d %s", code, b)
		}
		rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		for {
			_, data, err := c.Read(rctx)
			if err != nil {
				break
			}
			var m struct {
				Type string `json:"type"`
				Seq  int64  `json:"seq"`
			}
			_ = json.Unmarshal(data, &m)
			if m.Type == "location" {
				got = m.Seq
				break
			}
		}
		rcancel()
		if ctx.Err() != nil {
			t.Fatal("no fix reached the customer")
		}
		if got == 0 && c.Ping(ctx) != nil {
			// The read timeout closed the socket: open it again.
			c, _, err = websocket.Dial(ctx, wsURL, nil)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}
