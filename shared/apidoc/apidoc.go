// Package apidoc serves a service's OpenAPI document and checks it against
// the service's real routes and what each route requires of its callers,
// so the two cannot drift apart unnoticed.
package apidoc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// Handler serves doc, an OpenAPI document in JSON, as "GET /openapi.json".
func Handler(doc []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
}

// Secured is a route handler that says what it requires of a caller, as
// OpenAPI security requirements: alternatives, each mapping a security
// scheme to the roles it admits (shared/auth's guards are). A handler that
// is not Secured is public.
type Secured interface {
	Security() []map[string][]string
}

// methods are the operations an OpenAPI path item can hold.
var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// Operations lists doc's operations as "METHOD /path/{param}". It fails on
// a document that is not OpenAPI 3.1, or whose operations lack responses.
func Operations(doc []byte) ([]string, error) {
	sec, err := OperationSecurity(doc)
	if err != nil {
		return nil, err
	}
	ops := make([]string, 0, len(sec))
	for op := range sec {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	return ops, nil
}

// OperationSecurity returns each of doc's operations ("METHOD /path") with
// its security requirements, normalised (see Normalize). Every operation
// must declare them itself, "security": [] for a public one, and name
// only schemes the document defines; it fails otherwise, and where
// Operations does.
func OperationSecurity(doc []byte) (map[string][]map[string][]string, error) {
	var d struct {
		OpenAPI    string                                `json:"openapi"`
		Info       struct{ Title, Version string }       `json:"info"`
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
		} `json:"components"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("parse the document: %w", err)
	}
	if !strings.HasPrefix(d.OpenAPI, "3.1.") {
		return nil, fmt.Errorf("openapi is %q, want 3.1.x", d.OpenAPI)
	}
	if d.Info.Title == "" || d.Info.Version == "" {
		return nil, fmt.Errorf("info needs a title and a version")
	}
	out := map[string][]map[string][]string{}
	for path, item := range d.Paths {
		for method, raw := range item {
			if !slices.Contains(methods, method) {
				continue // parameters, summary, …
			}
			name := strings.ToUpper(method) + " " + path
			var op struct {
				Responses map[string]json.RawMessage `json:"responses"`
				Security  *[]map[string][]string     `json:"security"`
			}
			if err := json.Unmarshal(raw, &op); err != nil || len(op.Responses) == 0 {
				return nil, fmt.Errorf("%s: an operation needs responses", name)
			}
			if op.Security == nil {
				return nil, fmt.Errorf(`%s: an operation declares its security ("security": [] when public)`, name)
			}
			for _, req := range *op.Security {
				for scheme := range req {
					if _, ok := d.Components.SecuritySchemes[scheme]; !ok {
						return nil, fmt.Errorf("%s: security scheme %q is not in components.securitySchemes", name, scheme)
					}
				}
			}
			out[name] = Normalize(*op.Security)
		}
	}
	return out, nil
}

// Normalize sorts security requirements, and the roles in each, so that
// two lists that mean the same compare equal; nil becomes empty.
func Normalize(reqs []map[string][]string) []map[string][]string {
	out := make([]map[string][]string, 0, len(reqs))
	for _, req := range reqs {
		n := make(map[string][]string, len(req))
		for scheme, roles := range req {
			roles = slices.Clone(roles)
			if roles == nil {
				roles = []string{}
			}
			slices.Sort(roles)
			n[scheme] = roles
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b map[string][]string) int {
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		return strings.Compare(string(ja), string(jb))
	})
	return out
}

// RouteSecurity returns what each of a router's routes requires: the
// Security of its handler when that is Secured, none otherwise.
func RouteSecurity(r chi.Routes) (map[string][]map[string][]string, error) {
	out := map[string][]map[string][]string{}
	err := chi.Walk(r, func(method, route string, h http.Handler, _ ...func(http.Handler) http.Handler) error {
		var reqs []map[string][]string
		if s, ok := h.(Secured); ok {
			reqs = s.Security()
		}
		out[method+" "+docRoute(route)] = Normalize(reqs)
		return nil
	})
	return out, err
}

// docRoute spells a chi route as the document does: no trailing slash, a
// catch-all as one parameter.
func docRoute(route string) string {
	if route != "/" {
		route = strings.TrimSuffix(route, "/")
	}
	if strings.HasSuffix(route, "/*") {
		route = strings.TrimSuffix(route, "*") + "{asset}"
	}
	return route
}

// Routes lists a chi router's routes as "METHOD /path/{param}", in the
// document's spelling: no trailing slash, a catch-all as one parameter.
func Routes(r chi.Routes) ([]string, error) {
	var routes []string
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes = append(routes, method+" "+docRoute(route))
		return nil
	})
	slices.Sort(routes)
	return slices.Compact(routes), err
}

// Diff compares a router with its document: the routes the document does
// not describe, and the operations it describes that are not routes.
func Diff(r chi.Routes, doc []byte) (undocumented, missing []string, err error) {
	ops, err := Operations(doc)
	if err != nil {
		return nil, nil, err
	}
	routes, err := Routes(r)
	if err != nil {
		return nil, nil, err
	}
	for _, rt := range routes {
		if !slices.Contains(ops, rt) {
			undocumented = append(undocumented, rt)
		}
	}
	for _, op := range ops {
		if !slices.Contains(routes, op) {
			missing = append(missing, op)
		}
	}
	return undocumented, missing, nil
}

// SecurityDiff lists the routes whose document declares other security
// requirements than their handlers enforce, each with both.
func SecurityDiff(r chi.Routes, doc []byte) ([]string, error) {
	documented, err := OperationSecurity(doc)
	if err != nil {
		return nil, err
	}
	enforced, err := RouteSecurity(r)
	if err != nil {
		return nil, err
	}
	var wrong []string
	for route, got := range enforced {
		want, ok := documented[route]
		if !ok {
			continue // Diff's to report
		}
		if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
			wrong = append(wrong, fmt.Sprintf("%s: the router enforces %s, the document says %s", route, g, w))
		}
	}
	slices.Sort(wrong)
	return wrong, nil
}

// MustMatch fails the test unless doc describes exactly r's routes, each
// with the security its handler enforces.
func MustMatch(tb testing.TB, r chi.Routes, doc []byte) {
	tb.Helper()
	undocumented, missing, err := Diff(r, doc)
	if err != nil {
		tb.Fatal(err)
	}
	if len(undocumented) > 0 || len(missing) > 0 {
		tb.Fatalf("routes not in the OpenAPI document: %v; documented but not routes: %v", undocumented, missing)
	}
	wrong, err := SecurityDiff(r, doc)
	if err != nil {
		tb.Fatal(err)
	}
	for _, w := range wrong {
		tb.Error(w)
	}
}
