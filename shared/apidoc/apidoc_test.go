package apidoc

import (
	"net/http"
	"slices"
	"testing"

	"github.com/go-chi/chi/v5"
)

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
		"/v1/things": {"post": {"responses": {"201": {"description": "made"}}}},
		"/v1/things/{id}": {"parameters": [], "get": {"responses": {"200": {"description": "it"}}}},
		"/assets/{asset}": {"get": {"responses": {"200": {"description": "it"}}}},
		"/gone": {"delete": {"responses": {"204": {"description": "gone"}}}}}}`)
	undocumented, missing, err := Diff(r, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(undocumented, []string{"GET /secret"}) || !slices.Equal(missing, []string{"DELETE /gone"}) {
		t.Fatalf("undocumented %v, missing %v", undocumented, missing)
	}
}

func TestOperationsRejects(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"ErrNotJSON", `openapi: 3.1.0`},
		{"ErrVersion", `{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}`},
		{"ErrNoInfo", `{"openapi": "3.1.0", "paths": {}}`},
		{"ErrNoResponses", `{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x": {"get": {}}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Operations([]byte(tt.doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
