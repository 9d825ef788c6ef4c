// Package apidoc serves a service's OpenAPI document and checks it against
// the service's real routes, so the two cannot drift apart unnoticed.
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

// methods are the operations an OpenAPI path item can hold.
var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// Operations lists doc's operations as "METHOD /path/{param}". It fails on
// a document that is not OpenAPI 3.1, or whose operations lack responses.
func Operations(doc []byte) ([]string, error) {
	var d struct {
		OpenAPI string                                `json:"openapi"`
		Info    struct{ Title, Version string }       `json:"info"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
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
	var ops []string
	for path, item := range d.Paths {
		for method, raw := range item {
			if !slices.Contains(methods, method) {
				continue // parameters, summary, …
			}
			var op struct {
				Responses map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(raw, &op); err != nil || len(op.Responses) == 0 {
				return nil, fmt.Errorf("%s %s: an operation needs responses", strings.ToUpper(method), path)
			}
			ops = append(ops, strings.ToUpper(method)+" "+path)
		}
	}
	slices.Sort(ops)
	return ops, nil
}

// Routes lists a chi router's routes as "METHOD /path/{param}", in the
// document's spelling: no trailing slash, a catch-all as one parameter.
func Routes(r chi.Routes) ([]string, error) {
	var routes []string
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if route != "/" {
			route = strings.TrimSuffix(route, "/")
		}
		if strings.HasSuffix(route, "/*") {
			route = strings.TrimSuffix(route, "*") + "{asset}"
		}
		routes = append(routes, method+" "+route)
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

// MustMatch fails the test unless doc describes exactly r's routes.
func MustMatch(tb testing.TB, r chi.Routes, doc []byte) {
	tb.Helper()
	undocumented, missing, err := Diff(r, doc)
	if err != nil {
		tb.Fatal(err)
	}
	if len(undocumented) > 0 || len(missing) > 0 {
		tb.Fatalf("routes not in the OpenAPI document: %v; documented but not routes: %v", undocumented, missing)
	}
}
