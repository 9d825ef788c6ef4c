package apidoc

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// guarded is a Secured handler, as shared/auth's guards are.
type guarded struct {
	http.HandlerFunc
	reqs []map[string][]string
}

func (g guarded) Security() []map[string][]string { return g.reqs }

func TestDiff(t *testing.T) {
	r := chi.NewRouter()
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	r.Route("/v1/things", func(r chi.Router) {
		r.Post("/", ok)
		r.Get("/{id}", ok)
	})
	r.Get("/assets/*", ok)
	r.Get("/secret", ok)
	doc := []byte(`{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {
		"/v1/things": {"post": {"security": [], "responses": {"201": {"description": "made"}}}},
		"/v1/things/{id}": {"parameters": [], "get": {"security": [], "responses": {"200": {"description": "it"}}}},
		"/assets/{asset}": {"get": {"security": [], "responses": {"200": {"description": "it"}}}},
		"/gone": {"delete": {"security": [], "responses": {"204": {"description": "gone"}}}}}}`)
	undocumented, missing, err := Diff(r, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(undocumented, []string{"GET /secret"}) || !slices.Equal(missing, []string{"DELETE /gone"}) {
		t.Fatalf("undocumented %v, missing %v", undocumented, missing)
	}
}

// TestSecurityDiff: a route whose document names other roles or schemes
// than its guard enforces, or calls a guarded route public, is reported;
// the order of alternatives and roles does not matter.
func TestSecurityDiff(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	r := chi.NewRouter()
	r.Method("GET", "/public", ok)
	r.Method("GET", "/same", guarded{ok, []map[string][]string{{"bearer": {"b", "a"}}, {"token": {"a", "b"}}}})
	r.Method("GET", "/roles", guarded{ok, []map[string][]string{{"bearer": {"a"}}}})
	r.Method("GET", "/open", guarded{ok, []map[string][]string{{"bearer": {"a"}}}})
	r.Method("GET", "/closed", ok)
	doc := []byte(`{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
		"components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "token": {"type": "apiKey", "in": "query", "name": "token"}}},
		"paths": {
		"/public": {"get": {"security": [], "responses": {"200": {"description": "it"}}}},
		"/same": {"get": {"security": [{"token": ["b", "a"]}, {"bearer": ["a", "b"]}], "responses": {"200": {"description": "it"}}}},
		"/roles": {"get": {"security": [{"bearer": ["a", "b"]}], "responses": {"200": {"description": "it"}}}},
		"/open": {"get": {"security": [], "responses": {"200": {"description": "it"}}}},
		"/closed": {"get": {"security": [{"bearer": ["a"]}], "responses": {"200": {"description": "it"}}}}}}`)
	wrong, err := SecurityDiff(r, doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(wrong) != 3 {
		t.Fatalf("reported %q, want /closed, /open and /roles", wrong)
	}
	for i, route := range []string{"GET /closed:", "GET /open:", "GET /roles:"} {
		if !strings.HasPrefix(wrong[i], route) {
			t.Errorf("report %d is %q, want one about %s", i, wrong[i], route)
		}
	}
}

func TestOperationsRejects(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"ErrNotJSON", `openapi: 3.1.0`},
		{"ErrVersion", `{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}`},
		{"ErrNoInfo", `{"openapi": "3.1.0", "paths": {}}`},
		{"ErrNoResponses", `{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x": {"get": {"security": []}}}}`},
		{"ErrNoSecurity", `{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x": {"get": {"responses": {"200": {"description": "it"}}}}}}`},
		{"ErrUnknownScheme", `{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x": {"get": {"security": [{"bearer": []}], "responses": {"200": {"description": "it"}}}}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Operations([]byte(tt.doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
