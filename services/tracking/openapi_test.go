package main

import (
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
	base := &service.Base{Log: zap.NewNop()}
	r := base.Router()
	addRoutes(r, zap.NewNop(), nil, nil, nil, nil, nil, nil, auth.NewGuard(token.NewSigner([]byte("x"))), base.Admin, nil, pageConfig{})
	apidoc.MustMatch(t, r, openAPI)
}
