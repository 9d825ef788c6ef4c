package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/service"
	"github.com/dabba/dabba/shared/token"
)

// TestOpenAPIMatchesRoutes holds openapi.json to the router run builds:
// every route documented, every documented operation a route, each with the
// security (roles) its guard enforces.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	r := (&service.Base{Log: zap.NewNop()}).Router()
	signer := token.NewSigner([]byte("x"))
	addRoutes(r, zap.NewNop(), nil, signer, auth.NewGuard(signer), Limits{}, "", nil, nil)
	apidoc.MustMatch(t, r, openAPI)
}

// TestOpenAPIServed: the running service serves its document as JSON.
func TestOpenAPIServed(t *testing.T) {
	base := MustRun(t)
	resp, err := http.Get(base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		OpenAPI string `json:"openapi"`
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" ||
		json.NewDecoder(resp.Body).Decode(&doc) != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("GET /openapi.json = %d %s, openapi %q", resp.StatusCode, resp.Header.Get("Content-Type"), doc.OpenAPI)
	}
}
