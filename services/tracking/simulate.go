package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/dabba/dabba/shared/config"
	"github.com/dabba/dabba/shared/events"
	"github.com/dabba/dabba/shared/token"
)

// demoRoutes are deliveries around Mumbai: the rider rides from start to
// the kitchen (from), waits there for the food, then rides to the door (to)
// by way of one turn, so the riders do not fly in straight lines.
var demoRoutes = []struct{ start, from, turn, to [2]float64 }{
	{[2]float64{19.0080, 72.8600}, [2]float64{19.0176, 72.8562}, [2]float64{19.0260, 72.8530}, [2]float64{19.0330, 72.8400}},
	{[2]float64{19.0680, 72.8290}, [2]float64{19.0600, 72.8350}, [2]float64{19.0590, 72.8500}, [2]float64{19.0450, 72.8550}},
	{[2]float64{18.9330, 72.8420}, [2]float64{18.9400, 72.8350}, [2]float64{18.9520, 72.8340}, [2]float64{18.9600, 72.8200}},
	{[2]float64{19.1090, 72.8640}, [2]float64{19.1000, 72.8700}, [2]float64{19.0900, 72.8720}, [2]float64{19.0850, 72.8850}},
}

// simulate is "tracking simulate", behind make demo: against a running
// stack it records where the demo's kitchen is (on the restaurant
// service), places a few orders on the orders API, assigns each a rider,
// prints the tracking pages to open, and drives the riders over the rider
// WebSocket, one fix every DEMO_INTERVAL: to the kitchen (the first rider's
// route starts from where the kitchen is recorded: its feed hears the rider
// arriving), a wait for the food, then to the door (the customer hears the
// rider is near), moving the orders along as each party would: the
// restaurant accepts, the rider picks up and delivers. Each call carries
// the token of the role that makes it (customer, ops, restaurant, rider),
// minted here.
//
// Environment: ORDERS_URL (http://127.0.0.1:8080), TRACKING_URL
// (http://127.0.0.1:8081), RESTAURANT_URL (http://127.0.0.1:8083),
// DEMO_RIDERS (3, at most 4), DEMO_STEPS (180), DEMO_INTERVAL (500ms), and
// TOKEN_SECRET, which must be the stack's (unset: make run's development
// secret).
func simulate(ctx context.Context, getenv func(string) string, stdout io.Writer, log *zap.Logger) error {
	env := config.Env(getenv)
	ordersURL := strings.TrimRight(env.String("ORDERS_URL", "http://127.0.0.1:8080"), "/")
	trackingURL := strings.TrimRight(env.String("TRACKING_URL", "http://127.0.0.1:8081"), "/")
	restaurantURL := strings.TrimRight(env.String("RESTAURANT_URL", "http://127.0.0.1:8083"), "/")
	riders, err := env.Int("DEMO_RIDERS", 3)
	if err != nil {
		return err
	}
	steps, err := env.Int("DEMO_STEPS", 180)
	if err != nil {
		return err
	}
	interval, err := env.Duration("DEMO_INTERVAL", 500*time.Millisecond)
	if err != nil {
		return err
	}
	riders = max(1, min(riders, len(demoRoutes)))
	steps = max(steps, 2)
	secret, dev := token.ClientSecret(getenv)
	if dev {
		log.Info("TOKEN_SECRET is unset: minting tokens with make run's development secret")
	}
	tokens := demoTokens{token.NewSigner(secret)}
	client := &http.Client{Timeout: 5 * time.Second}
	batch := uuid.NewString()[:4]
	ops, err := tokens.mint(token.AudienceOps, "demo-operator")
	if err != nil {
		return err
	}
	kitchen, err := tokens.mint(token.AudienceRestaurant, demoRestaurant)
	if err != nil {
		return err
	}
	// The kitchen is where the first route starts its delivery from.
	if err := call(ctx, client, http.MethodPut, restaurantURL+"/v1/restaurants/"+demoRestaurant, "", kitchen,
		fmt.Sprintf(`{"name":"Demo kitchen","lat":%f,"lng":%f}`, demoRoutes[0].from[0], demoRoutes[0].from[1]), nil); err != nil {
		return fmt.Errorf("record the kitchen (is make run running?): %w", err)
	}

	type delivery struct {
		orderID, rider, riderTok string
		route                    int
	}
	var ds []delivery
	for i := range riders {
		to := demoRoutes[i].to
		customer, err := tokens.mint(token.AudienceCustomer, fmt.Sprintf("demo-%d", i))
		if err != nil {
			return err
		}
		body := fmt.Sprintf(`{"restaurant_id":%q,"email":"demo%d@example.com",
			"items":[{"sku":"thali","quantity":1}],
			"delivery_address":{"line1":"Demo street %d","lat":%f,"lng":%f}}`, demoRestaurant, i, i+1, to[0], to[1])
		var o struct {
			ID            string `json:"id"`
			TrackingToken string `json:"tracking_token"`
		}
		if err := call(ctx, client, http.MethodPost, ordersURL+"/v1/orders", uuid.NewString(), customer, body, &o); err != nil {
			return fmt.Errorf("place order (is make run running? it gives %s the menu the demo orders from): %w", demoRestaurant, err)
		}
		rider := fmt.Sprintf("demo-rider-%s-%d", batch, i+1)
		if err := call(ctx, client, http.MethodPost, ordersURL+"/v1/orders/"+o.ID+"/rider", "", ops, `{"rider_id":"`+rider+`"}`, nil); err != nil {
			return fmt.Errorf("assign rider: %w", err)
		}
		riderTok, err := tokens.mint(token.AudienceRider, rider)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "order %s, rider %s: %s/track/%s?token=%s\n  its kitchen's feed (rider arriving): %s/v1/restaurants/%s/orders\n",
			events.ShortID(o.ID), rider, trackingURL, o.ID, o.TrackingToken, restaurantURL, demoRestaurant)
		ds = append(ds, delivery{orderID: o.ID, rider: rider, riderTok: riderTok, route: i})
	}
	fmt.Fprintf(stdout, "driving %d riders, %d fixes each, one every %v; open a page above to watch\n", len(ds), steps, interval)

	g, ctx := errgroup.WithContext(ctx)
	for _, d := range ds {
		g.Go(func() error {
			move := func(status, tok string) {
				if err := call(ctx, client, http.MethodPost, ordersURL+"/v1/orders/"+d.orderID+"/status", "", tok,
					`{"status":"`+status+`"}`, nil); err != nil {
					log.Warn("order not moved", zap.String("order_id", d.orderID), zap.String("status", status), zap.Error(err))
				}
			}
			waitPaid(ctx, client, ordersURL, d.orderID, ops)
			move("accepted", kitchen)
			if err := drive(ctx, trackingURL, d.rider, d.riderTok, d.route, steps, interval, func(step int) {
				if step == legs(steps).pickup {
					move("picked_up", d.riderTok) // a moment at the kitchen, then off
				}
			}, log); err != nil {
				return err
			}
			move("delivered", d.riderTok)
			fmt.Fprintf(stdout, "order %s delivered\n", events.ShortID(d.orderID))
			return nil
		})
	}
	return g.Wait()
}

// demoRestaurant is the kitchen the demo's orders come from: the one make
// run gives a menu.
const demoRestaurant = "r1"

// demoTokens mints the demo's tokens, valid for as long as a demo runs.
type demoTokens struct{ s *token.Signer }

func (d demoTokens) mint(kind, sub string) (string, error) { return d.s.Mint(kind, sub, 2*time.Hour) }

// waitPaid waits (up to 15 s) until the payment service has charged the
// order, so the status moves that follow are legal; tok may read it.
func waitPaid(ctx context.Context, client *http.Client, ordersURL, orderID, tok string) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var o struct {
			Status string `json:"status"`
		}
		if call(ctx, client, http.MethodGet, ordersURL+"/v1/orders/"+orderID, "", tok, "", &o) == nil && o.Status != "placed" {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// demoLegs are the steps at which a demo rider reaches the kitchen and
// leaves it with the food: a quarter of the way to the kitchen, a tenth
// waiting there, the rest to the door.
type demoLegs struct{ kitchen, pickup int }

func legs(steps int) demoLegs {
	return demoLegs{kitchen: steps / 4, pickup: steps/4 + steps/10}
}

// drive streams a rider's fixes along route over the rider WebSocket: to
// the kitchen, a wait there, then to the turn and on to the door, with a
// little GPS noise.
func drive(ctx context.Context, trackingURL, rider, tok string, route, steps int, interval time.Duration, at func(step int), log *zap.Logger) error {
	ws := strings.Replace(trackingURL, "http", "ws", 1) + "/v1/riders/" + rider + "/ws"
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, _, err := websocket.Dial(dctx, ws, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	cancel()
	if err != nil {
		return fmt.Errorf("rider socket: %w", err)
	}
	defer c.CloseNow()
	// Error frames (a fix refused) are logged, not fatal.
	go func() {
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			log.Warn("fix refused", zap.String("rider_id", rider), zap.ByteString("frame", data))
		}
	}()
	rt := demoRoutes[route]
	l := legs(steps)
	ride := steps - l.pickup
	prev := rt.start
	for step := 1; step <= steps; step++ {
		at(step)
		var pos [2]float64
		speed := 18 + rand.Float64()*10
		switch f := float64(step-l.pickup) / float64(ride); {
		case step <= l.kitchen:
			pos = lerp(rt.start, rt.from, float64(step)/float64(l.kitchen))
		case step <= l.pickup:
			pos, speed = rt.from, 0
		case f < 0.5:
			pos = lerp(rt.from, rt.turn, f*2)
		default:
			pos = lerp(rt.turn, rt.to, (f-0.5)*2)
		}
		if speed > 0 && step < steps {
			pos[0] += (rand.Float64() - 0.5) * 0.00008
			pos[1] += (rand.Float64() - 0.5) * 0.00008
		}
		heading := math.Mod(math.Atan2((pos[1]-prev[1])*math.Cos(pos[0]*math.Pi/180), pos[0]-prev[0])*180/math.Pi+360, 360)
		prev = pos
		fix := fmt.Sprintf(`{"lat":%.6f,"lng":%.6f,"heading":%.1f,"speed_kmh":%.1f,"seq":%d,"ts":%q}`,
			pos[0], pos[1], heading, speed, step, time.Now().UTC().Format(time.RFC3339Nano))
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.Write(wctx, websocket.MessageText, []byte(fix))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("rider %s: %w", rider, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
	_ = c.Close(websocket.StatusNormalClosure, "arrived")
	return nil
}

func lerp(a, b [2]float64, f float64) [2]float64 {
	return [2]float64{a[0] + (b[0]-a[0])*f, a[1] + (b[1]-a[1])*f}
}

// call sends a JSON request and decodes a JSON answer into out (if not nil).
func call(ctx context.Context, client *http.Client, method, url, idemKey, bearerTok, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if bearerTok != "" {
		req.Header.Set("Authorization", "Bearer "+bearerTok)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
