package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dabba/dabba/shared/token"
)

func TestRoute(t *testing.T) {
	signer := token.NewSigner([]byte("a-secret-of-at-least-thirty-two-bytes"))
	mint := func(aud, sub string) string {
		tok, err := signer.Mint(aud, sub, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	var seen Principal
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen, _ = From(r.Context()) })
	g := NewGuard(signer)
	header, query := g.Allow(h, token.AudienceCustomer, token.AudienceOps), g.AllowQuery(h, token.AudienceTrack)
	tests := []struct {
		name         string
		route        *Route
		header, qtok string
		want         int
		wantWho      Principal
	}{
		{"OK", header, mint(token.AudienceCustomer, "c1"), "", 200, Principal{token.AudienceCustomer, "c1"}},
		{"OKOtherRole", header, mint(token.AudienceOps, "op"), "", 200, Principal{token.AudienceOps, "op"}},
		{"ErrNoToken", header, "", "", 401, Principal{}},
		{"ErrGarbage", header, "x.y.z", "", 401, Principal{}},
		{"ErrWrongRole", header, mint(token.AudienceRider, "d1"), "", 403, Principal{}},
		// The query is for WebSockets and pages only.
		{"ErrQueryNotTaken", header, "", mint(token.AudienceCustomer, "c1"), 401, Principal{}},
		{"OKQuery", query, "", mint(token.AudienceTrack, "o1"), 200, Principal{token.AudienceTrack, "o1"}},
		{"OKQueryHeader", query, mint(token.AudienceTrack, "o1"), "", 200, Principal{token.AudienceTrack, "o1"}},
		{"ErrQueryWrongRole", query, "", mint(token.AudienceCustomer, "c1"), 403, Principal{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen = Principal{}
			r := httptest.NewRequest(http.MethodGet, "/x?token="+tt.qtok, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", "Bearer "+tt.header)
			}
			w := httptest.NewRecorder()
			tt.route.ServeHTTP(w, r)
			if w.Code != tt.want || seen != tt.wantWho {
				t.Fatalf("%d as %+v, want %d as %+v", w.Code, seen, tt.want, tt.wantWho)
			}
			if w.Code >= 400 && w.Header().Get("Content-Type") != "application/problem+json" {
				t.Errorf("content type %q", w.Header().Get("Content-Type"))
			}
			if w.Code == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func TestAdmin(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	for _, tt := range []struct {
		name, configured, sent string
		want                   int
	}{
		{"OK", "s3cret", "s3cret", 200},
		{"ErrWrong", "s3cret", "s3cre", 401},
		{"ErrNone", "s3cret", "", 401},
		{"ErrOff", "", "anything", 503},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/stats", nil)
			if tt.sent != "" {
				r.Header.Set("Authorization", "Bearer "+tt.sent)
			}
			w := httptest.NewRecorder()
			Admin(tt.configured, ok).ServeHTTP(w, r)
			if w.Code != tt.want {
				t.Fatalf("%d, want %d", w.Code, tt.want)
			}
		})
	}
}
