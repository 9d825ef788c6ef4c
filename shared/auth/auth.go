// Package auth guards Dabba's HTTP routes. A guarded route names the roles
// (token audiences, see shared/token) that may call it: a request without a
// valid bearer token gets 401, one with a valid token of another role 403,
// and the handler finds who is calling with From. What a role may do to a
// particular order, menu or feed is the handler's business; it answers 403,
// or 404 where saying so would reveal that something exists.
//
// Each guard says what it requires as an OpenAPI security requirement
// (Security), so a test can hold a service's OpenAPI document to what its
// router really enforces.
package auth

import (
	"context"
	"crypto/subtle"
	"net/http"
	"slices"
	"strings"

	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/token"
)

// Security scheme names, as the OpenAPI documents spell them.
const (
	// SchemeBearer is "Authorization: Bearer <JWT>".
	SchemeBearer = "bearer"
	// SchemeQuery is the same JWT in the query's "token" parameter, for
	// WebSockets and pages: a browser cannot give those a header.
	SchemeQuery = "token"
	// SchemeAdmin is "Authorization: Bearer <ADMIN_TOKEN>".
	SchemeAdmin = "admin"
)

// Principal is who a request comes from: a verified token's audience (the
// role) and subject.
type Principal struct {
	Role string
	ID   string
}

type principalKey struct{}

// From returns the principal a guard let through; ok is false on a route
// no guard protects.
func From(ctx context.Context) (p Principal, ok bool) {
	p, ok = ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// WithPrincipal returns ctx carrying p, as a guard passes it on (for tests
// of handlers, too).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// Secured is a handler that says what it requires: its OpenAPI security
// requirements, alternatives each mapping a scheme to the roles it admits.
type Secured interface {
	Security() []map[string][]string
}

// Guard checks bearer tokens with one signer.
type Guard struct {
	signer *token.Signer
}

// NewGuard returns a guard checking tokens with signer.
func NewGuard(signer *token.Signer) *Guard { return &Guard{signer: signer} }

// Allow returns h callable only with a token of one of roles, taken from
// the Authorization header.
func (g *Guard) Allow(h http.Handler, roles ...string) *Route {
	return &Route{guard: g, next: h, roles: roles}
}

// AllowQuery is Allow that also accepts the token in the query's "token"
// parameter: for a WebSocket or a page a browser opens.
func (g *Guard) AllowQuery(h http.Handler, roles ...string) *Route {
	return &Route{guard: g, next: h, roles: roles, query: true}
}

// Route is a guarded handler.
type Route struct {
	guard *Guard
	next  http.Handler
	roles []string
	query bool
}

// Roles returns the roles r admits.
func (r *Route) Roles() []string { return slices.Clone(r.roles) }

// Security returns r's OpenAPI security requirements.
func (r *Route) Security() []map[string][]string {
	s := []map[string][]string{{SchemeBearer: r.Roles()}}
	if r.query {
		s = append(s, map[string][]string{SchemeQuery: r.Roles()})
	}
	return s
}

// ServeHTTP answers 401 or 403 problems, or serves the request with its
// principal in its context.
func (r *Route) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	tok := Bearer(req)
	if tok == "" && r.query {
		tok = req.URL.Query().Get("token")
	}
	if tok == "" {
		Unauthorized(w, "a bearer token is required")
		return
	}
	c, err := r.guard.signer.Verify(tok)
	if err != nil {
		Unauthorized(w, "the token is invalid or expired")
		return
	}
	if !slices.Contains(r.roles, c.Audience) {
		httpx.WriteProblem(w, Forbidden("a "+c.Audience+" token may not do this; it takes "+strings.Join(r.roles, ", ")))
		return
	}
	r.next.ServeHTTP(w, req.WithContext(WithPrincipal(req.Context(), Principal{Role: c.Audience, ID: c.Subject})))
}

// Bearer returns the token of an "Authorization: Bearer" header, or "".
func Bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// Unauthorized writes a 401 problem with its WWW-Authenticate challenge.
func Unauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="dabba"`)
	httpx.WriteProblem(w, httpx.NewProblem(http.StatusUnauthorized, detail))
}

// Forbidden returns a 403 problem: the caller is known, and may not.
func Forbidden(detail string) *httpx.Problem {
	return httpx.NewProblem(http.StatusForbidden, detail)
}

// Admin returns h callable only with "Authorization: Bearer <token>", the
// operators' ADMIN_TOKEN: the dead-letter API, and what exposes a
// process's internals (profiles, memory statistics, forced collections).
// With no token configured it answers 503 saying so, which tells an
// operator what to set (a 404 would look like a wrong URL).
func Admin(token string, h http.Handler) *AdminRoute { return &AdminRoute{token: token, next: h} }

// AdminRoute is a handler behind the admin token.
type AdminRoute struct {
	token string
	next  http.Handler
}

// Security returns the admin scheme.
func (a *AdminRoute) Security() []map[string][]string {
	return []map[string][]string{{SchemeAdmin: {}}}
}

func (a *AdminRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.token == "" {
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "the admin API is off: set ADMIN_TOKEN"))
		return
	}
	if subtle.ConstantTimeCompare([]byte(Bearer(r)), []byte(a.token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="dabba-admin"`)
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusUnauthorized, "admin bearer token missing or wrong"))
		return
	}
	a.next.ServeHTTP(w, r)
}
