package main

import (
	"testing"

	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/apidoc"
	"github.com/dabba/dabba/shared/service"
)

// TestOpenAPIMatchesRoutes holds openapi.json to the router run builds:
// every route documented, every documented operation a route.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	r := (&service.Base{Log: zap.NewNop()}).Router()
	addRoutes(r, zap.NewNop(), nil, nil, nil, nil, nil, nil, nil, nil, pageConfig{})
	apidoc.MustMatch(t, r, openAPI)
}
