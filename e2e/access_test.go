package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/token"
)

// Who may do what, role × route, against the running stack: every route of
// both OpenAPI documents, the restaurant feed and the admin API, each with
// the callers it admits (which must answer as allowed), no token and a bad
// one (401), and other principals' tokens (403, or 404 where the route
// says an order that is not the caller's does not exist). The table is
// held to the documents: each documented operation has its rows, and the
// roles a row admits are the roles its operation's security lists.

// principal is a caller of the table: a role (or "admin", or "" for none)
// and a token.
type principal struct {
	name, role, tok string
}

// accessFixture is the world the table runs in: an order of customer c at
// restaurant r with rider d assigned, paid; and the others.
type accessFixture struct {
	order                       order
	customer, restaurant, rider string
	p                           map[string]principal
}

func newAccessFixture(t *testing.T) *accessFixture {
	t.Helper()
	f := &accessFixture{customer: "c-acl-" + uuid.NewString()[:8], restaurant: "r-acl-" + uuid.NewString()[:8], rider: "d-acl-" + uuid.NewString()[:8]}
	f.order = placeOrder(t, newKey(), orderJSON(f.customer, f.restaurant, 1600))
	assignRider(t, f.order.ID, f.rider)
	waitPaid(t, 20*time.Second, f.order.ID)
	other := placeOrder(t, newKey(), orderJSON("c-acl-other", f.restaurant, 1600))
	f.p = map[string]principal{}
	for _, p := range []principal{
		{"no token", "", ""},
		{"bad token", "", "not.a.token"},
		{"foreign secret", "", mustForeign(t)},
		{"customer", token.AudienceCustomer, as(t, token.AudienceCustomer, f.customer)},
		{"other customer", token.AudienceCustomer, as(t, token.AudienceCustomer, "c-acl-other")},
		{"restaurant", token.AudienceRestaurant, as(t, token.AudienceRestaurant, f.restaurant)},
		{"other restaurant", token.AudienceRestaurant, as(t, token.AudienceRestaurant, "r-acl-other")},
		{"rider", token.AudienceRider, as(t, token.AudienceRider, f.rider)},
		{"other rider", token.AudienceRider, as(t, token.AudienceRider, "d-acl-other")},
		{"ops", token.AudienceOps, opsToken(t)},
		{"track", token.AudienceTrack, f.order.TrackingToken},
		{"other track", token.AudienceTrack, other.TrackingToken},
		{"admin", "admin", e2eAdminToken},
	} {
		f.p[p.name] = p
	}
	return f
}

// mustForeign is a valid-looking token signed with another secret.
func mustForeign(t *testing.T) string {
	tok, err := token.NewSigner([]byte("not-the-stack's-secret-not-the-stack's")).Mint(token.AudienceOps, "x", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// freshOrder is an order of the fixture's customer and restaurant, with its
// rider, paid, and moved along to status (paid or accepted): for the rows
// that change an order.
func (f *accessFixture) freshOrder(t *testing.T, status string) string {
	t.Helper()
	o := placeOrder(t, newKey(), orderJSON(f.customer, f.restaurant, 1600))
	assignRider(t, o.ID, f.rider)
	waitPaid(t, 20*time.Second, o.ID)
	if status == "accepted" && move(t, f.p["restaurant"].tok, o.ID, "accepted") != http.StatusOK {
		t.Fatal("accept a fresh order")
	}
	return o.ID
}

// route is one operation of the table: how to call it, and how each
// caller is answered. Callers a route does not list are answered deny.
type route struct {
	op      string // "METHOD /path" as the OpenAPI documents spell it
	service int    // its port
	// call builds the request for a caller: path (with parameters) and
	// body. It may prepare a fresh order for a caller that will change it.
	call func(t *testing.T, f *accessFixture, who string) (path, body string)
	// allowed callers and what they get.
	allowed map[string]int
	// socket: the allowed callers open a WebSocket rather than get a code.
	socket bool
	// deny is what every other caller with a valid token gets (403, or
	// 404 for an order that is not theirs); denied overrides it per caller.
	deny   int
	denied map[string]int
	// public: no token needed, every caller is answered allowed["*"].
	public bool
}

func fixed(path, body string) func(*testing.T, *accessFixture, string) (string, string) {
	return func(*testing.T, *accessFixture, string) (string, string) { return path, body }
}

func accessTable() []route {
	o := ports.Orders
	tr := ports.Tracking
	order := func(suffix, body string) func(*testing.T, *accessFixture, string) (string, string) {
		return func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/orders/" + f.order.ID + suffix, body
		}
	}
	admin := func(op string, call func(*testing.T, *accessFixture, string) (string, string)) route {
		return route{op: op, service: o, call: call, allowed: map[string]int{"admin": 200}, deny: 401}
	}
	public := func(service int, op, path string) route {
		return route{op: op, service: service, call: fixed(path, ""), public: true, allowed: map[string]int{"*": 200}}
	}
	return []route{
		{op: "POST /v1/orders", service: o, call: func(t *testing.T, f *accessFixture, who string) (string, string) {
			customer := f.customer
			if who == "ops" {
				customer = "c-acl-by-ops"
			}
			return "/v1/orders", orderJSON(customer, f.restaurant, 1600)
		}, allowed: map[string]int{"customer": 201, "ops": 201}, deny: 403,
			// A body naming another customer than the token's.
			denied: map[string]int{"other customer": 403}},
		{op: "GET /v1/orders/{id}", service: o, call: order("", ""),
			allowed: map[string]int{"customer": 200, "restaurant": 200, "rider": 200, "ops": 200, "track": 200}, deny: 404,
			denied: map[string]int{"other track": 403}},
		{op: "POST /v1/orders/{id}/status", service: o, call: func(t *testing.T, f *accessFixture, who string) (string, string) {
			// Each admitted role makes a move it may, on an order of its
			// own in the status the move starts from; the others ask to
			// cancel the fixture's order.
			m, ok := map[string]struct{ from, to string }{
				"customer": {"paid", "cancelled"}, "restaurant": {"paid", "accepted"}, "rider": {"accepted", "picked_up"}, "ops": {"paid", "accepted"},
			}[who]
			if !ok {
				return "/v1/orders/" + f.order.ID + "/status", `{"status":"cancelled"}`
			}
			return "/v1/orders/" + f.freshOrder(t, m.from) + "/status", `{"status":"` + m.to + `"}`
		}, allowed: map[string]int{"customer": 200, "restaurant": 200, "rider": 200, "ops": 200}, deny: 404,
			denied: map[string]int{"track": 403, "other track": 403}},
		{op: "POST /v1/orders/{id}/rider", service: o, call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/orders/" + f.order.ID + "/rider", `{"rider_id":"` + f.rider + `"}`
		},
			allowed: map[string]int{"ops": 200}, deny: 403},
		{op: "GET /v1/restaurants/{id}/menu", service: o, public: true, allowed: map[string]int{"*": 200},
			call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
				return "/v1/restaurants/" + f.restaurant + "/menu", ""
			}},
		{op: "PUT /v1/restaurants/{id}/menu", service: o, call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/restaurants/" + f.restaurant + "/menu",
				fmt.Sprintf(`{"items":[{"sku":%q,"name":"Dish at 1600","price_cents":1600,"available":true}]}`, dish(1600))
		}, allowed: map[string]int{"restaurant": 200, "ops": 200}, deny: 403},
		admin("GET /v1/admin/dlq", fixed("/v1/admin/dlq", "")),
		admin("GET /v1/admin/dlq/{queue}/messages", fixed("/v1/admin/dlq/email/messages?limit=1", "")),
		admin("POST /v1/admin/dlq/{queue}/replay", fixed("/v1/admin/dlq/email/replay", `{"ids":["no-such-message"]}`)),
		admin("POST /v1/admin/dlq/{queue}/discard", fixed("/v1/admin/dlq/email/discard", `{"ids":["no-such-message"]}`)),
		public(o, "GET /openapi.json", "/openapi.json"),
		public(o, "GET /healthz", "/healthz"),
		public(o, "GET /readyz", "/readyz"),
		public(o, "GET /metrics", "/metrics"),

		{op: "POST /v1/riders/{rider_id}/location", service: tr, call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/riders/" + f.rider + "/location", fmt.Sprintf(`{"lat":19.02,"lng":72.84,"heading":0,"speed_kmh":0,"seq":%d,"ts":%q}`,
				time.Now().UnixNano(), time.Now().UTC().Format(time.RFC3339Nano))
		}, allowed: map[string]int{"rider": 202}, deny: 403},
		{op: "GET /v1/riders/{rider_id}/ws", service: tr, socket: true, call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/riders/" + f.rider + "/ws", ""
		}, allowed: map[string]int{"rider": 101}, deny: 403},
		{op: "GET /v1/orders/{id}/track", service: tr, socket: true, call: order("/track", ""),
			allowed: map[string]int{"track": 101}, deny: 403},
		{op: "GET /v1/orders/{id}/path", service: tr, call: order("/path", ""),
			allowed: map[string]int{"customer": 200, "ops": 200, "track": 200}, deny: 403},
		public(tr, "GET /track/{order_id}", "/track/"+uuid.NewString()),
		public(tr, "GET /track/assets/{asset}", "/track/assets/track.js"),
		{op: "GET /stats", service: tr, call: fixed("/stats", ""), allowed: map[string]int{"admin": 200}, deny: 401},
		public(tr, "GET /healthz", "/healthz"),
		public(tr, "GET /readyz", "/readyz"),
		public(tr, "GET /metrics", "/metrics"),
		public(tr, "GET /openapi.json", "/openapi.json"),

		{op: "GET /v1/restaurants/{id}/orders", service: ports.Restaurant, call: func(_ *testing.T, f *accessFixture, _ string) (string, string) {
			return "/v1/restaurants/" + f.restaurant + "/orders", ""
		}, allowed: map[string]int{"restaurant": 200, "ops": 200}, deny: 403},
	}
}

// want is what caller who gets from rt.
func (rt route) want(who principal) int {
	adminRoute := rt.allowed["admin"] != 0
	switch {
	case rt.public:
		return rt.allowed["*"]
	case rt.allowed[who.name] != 0:
		return rt.allowed[who.name]
	case who.role == "" || (who.role == "admin") != adminRoute:
		// No token, a bad one, or the admin token where a JWT is wanted
		// (and a JWT where the admin token is): not authenticated.
		return http.StatusUnauthorized
	case rt.denied[who.name] != 0:
		return rt.denied[who.name]
	}
	return rt.deny
}

// TestWhoMayDoWhat runs the table against the running stack.
func TestWhoMayDoWhat(t *testing.T) {
	f := newAccessFixture(t)
	names := make([]string, 0, len(f.p))
	for n := range f.p {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, rt := range accessTable() {
		t.Run(strings.ReplaceAll(rt.op, "/", "_"), func(t *testing.T) {
			for _, n := range names {
				who := f.p[n]
				want := rt.want(who)
				path, body := rt.call(t, f, n)
				got, answer := callAs(t, rt, who, path, body, want)
				if got != want {
					t.Errorf("%s as %s: %d %s, want %d", rt.op, n, got, answer, want)
				}
			}
		})
	}
}

// callAs calls rt as who and returns the status (101 for a WebSocket that
// opened) and the body of a refusal.
func callAs(t *testing.T, rt route, who principal, path, body string, want int) (int, string) {
	t.Helper()
	url := base(rt.service) + path
	if rt.socket && want == http.StatusSwitchingProtocols {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, strings.Replace(url, "http", "ws", 1),
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + who.tok}}})
		if err != nil {
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			return code, err.Error()
		}
		c.CloseNow()
		return http.StatusSwitchingProtocols, ""
	}
	method, _, _ := strings.Cut(rt.op, " ")
	h := map[string]string{}
	if body != "" {
		h["Content-Type"] = "application/json"
	}
	if who.tok != "" {
		h["Authorization"] = "Bearer " + who.tok
	}
	if rt.op == "POST /v1/orders" {
		h["Idempotency-Key"] = newKey()
	}
	code, hdr, b := do(t, method, url, h, body)
	if code >= 400 && !strings.HasPrefix(hdr.Get("Content-Type"), "application/problem+json") {
		t.Errorf("%s: a %d that is not problem+json: %s", rt.op, code, hdr.Get("Content-Type"))
	}
	if code == http.StatusUnauthorized && hdr.Get("WWW-Authenticate") == "" {
		t.Errorf("%s: a 401 without WWW-Authenticate", rt.op)
	}
	return code, string(b)
}

// TestWhoMayDoWhatCoversTheDocuments holds the table to both OpenAPI
// documents as the running services serve them: every documented operation
// has its row, and the roles the row admits are those its security lists
// (none for a public one; the admin token for the admin routes).
func TestWhoMayDoWhatCoversTheDocuments(t *testing.T) {
	table := map[string]route{}
	for _, rt := range accessTable() {
		table[fmt.Sprint(rt.service, " ", rt.op)] = rt
	}
	for _, service := range []int{ports.Orders, ports.Tracking} {
		code, _, doc := do(t, http.MethodGet, base(service)+"/openapi.json", nil, "")
		if code != http.StatusOK {
			t.Fatalf("GET /openapi.json = %d", code)
		}
		ops, err := apidoc.OperationSecurity(doc)
		if err != nil {
			t.Fatal(err)
		}
		for op, reqs := range ops {
			rt, ok := table[fmt.Sprint(service, " ", op)]
			if !ok {
				t.Errorf("%s (port %d) has no row in the table", op, service)
				continue
			}
			var documented []string
			for _, req := range reqs {
				for scheme, roles := range req {
					if scheme == "admin" {
						documented = append(documented, "admin")
					}
					documented = append(documented, roles...)
				}
			}
			slices.Sort(documented)
			documented = slices.Compact(documented)
			var admitted []string
			for who := range rt.allowed {
				if who != "*" {
					admitted = append(admitted, who)
				}
			}
			slices.Sort(admitted)
			if !slices.Equal(documented, admitted) {
				t.Errorf("%s: the document admits %v, the table %v", op, documented, admitted)
			}
		}
	}
	// The table's rows are the documents' operations, plus the restaurant
	// feed (whose service has no document).
	var extra []string
	for key := range table {
		if !strings.HasPrefix(key, fmt.Sprint(ports.Orders, " ")) && !strings.HasPrefix(key, fmt.Sprint(ports.Tracking, " ")) {
			extra = append(extra, key)
		}
	}
	if len(extra) != 1 || !strings.HasSuffix(extra[0], "GET /v1/restaurants/{id}/orders") {
		t.Errorf("rows of no document: %v", extra)
	}
}
