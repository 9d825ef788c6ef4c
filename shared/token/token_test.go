package token

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestVerify(t *testing.T) {
	s := NewSigner([]byte("secret"))
	good, _ := s.Tracking("o1", time.Hour)
	expired, _ := s.Tracking("o1", -time.Minute)
	other, _ := NewSigner([]byte("other")).Tracking("o1", time.Hour)
	claims := jwt.RegisteredClaims{Subject: "o1", Audience: jwt.ClaimStrings{"track"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	sign := func(m jwt.SigningMethod, c jwt.RegisteredClaims) string {
		tok, err := jwt.NewWithClaims(m, c).SignedString([]byte("secret"))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	with := func(f func(*jwt.RegisteredClaims)) jwt.RegisteredClaims { c := claims; f(&c); return c }
	tests := []struct {
		name, give string
		want       Claims
	}{
		{"OK", good, Claims{AudienceTrack, "o1"}},
		{"OKEveryAudience", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"ops"} })), Claims{AudienceOps, "o1"}},
		{"ErrExpired", expired, Claims{}},
		{"ErrOtherSecret", other, Claims{}},
		{"ErrAlgNone", none, Claims{}},
		// Signed with the right secret but another algorithm: only HS256
		// is accepted, so a token's header cannot choose how it is checked.
		{"ErrAlgHS512", sign(jwt.SigningMethodHS512, claims), Claims{}},
		{"ErrNoExpiry", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil })), Claims{}},
		{"ErrNoSubject", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.Subject = "" })), Claims{}},
		{"ErrUnknownAudience", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"admin"} })), Claims{}},
		{"ErrNoAudience", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.Audience = nil })), Claims{}},
		// A token naming two roles would be both at once.
		{"ErrTwoAudiences", sign(jwt.SigningMethodHS256, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"customer", "ops"} })), Claims{}},
		{"ErrGarbage", "not.a.jwt", Claims{}},
		{"ErrEmpty", "", Claims{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(tt.give)
			if strings.HasPrefix(tt.name, "Err") {
				if !errors.Is(err, ErrInvalid) || got != (Claims{}) {
					t.Fatalf("Verify = %+v, %v; want ErrInvalid", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Verify = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestMint(t *testing.T) {
	s := NewSigner([]byte("secret"))
	for _, aud := range Audiences {
		tok, err := s.Mint(aud, "x-1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := s.Verify(tok); err != nil || c != (Claims{aud, "x-1"}) {
			t.Fatalf("%s: Verify = %+v, %v", aud, c, err)
		}
	}
	if _, err := s.Mint("admin", "x", time.Hour); err == nil {
		t.Fatal("minted a token of an unknown audience")
	}
	if _, err := s.Mint(AudienceRider, "", time.Hour); err == nil {
		t.Fatal("minted a token without a subject")
	}
}

func TestSecretFromEnv(t *testing.T) {
	long := strings.Repeat("k", MinSecretLen)
	tests := []struct {
		name       string
		env        map[string]string
		want       string // "" for an error
		wantWarned bool
	}{
		{"OK", map[string]string{"TOKEN_SECRET": long}, long, false},
		{"ErrUnset", nil, "", false},
		{"ErrShort", map[string]string{"TOKEN_SECRET": long[1:]}, "", false},
		{"ErrDevSecret", map[string]string{"TOKEN_SECRET": DevSecret}, "", false},
		{"DevUnset", map[string]string{"DEV_MODE": "1"}, DevSecret, true},
		{"DevShort", map[string]string{"DEV_MODE": "1", "TOKEN_SECRET": "short"}, "short", true},
		{"DevLong", map[string]string{"DEV_MODE": "1", "TOKEN_SECRET": long}, long, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zap.WarnLevel)
			got, err := SecretFromEnv(func(k string) string { return tt.env[k] }, zap.New(core))
			if tt.want == "" {
				if err == nil {
					t.Fatalf("accepted %q", got)
				}
				return
			}
			if err != nil || string(got) != tt.want || (logs.Len() > 0) != tt.wantWarned {
				t.Fatalf("secret %q, %v, %d warnings", got, err, logs.Len())
			}
		})
	}
}

func TestClientSecret(t *testing.T) {
	if s, dev := ClientSecret(func(string) string { return "" }); string(s) != DevSecret || !dev {
		t.Fatalf("unset: %q %v", s, dev)
	}
	if s, dev := ClientSecret(func(string) string { return "mine" }); string(s) != "mine" || dev {
		t.Fatalf("set: %q %v", s, dev)
	}
}

func TestCheckSubject(t *testing.T) {
	tests := []struct {
		aud, sub string
		ok       bool
	}{
		{AudienceCustomer, "c1", true},
		{AudienceCustomer, "", false},
		{AudienceCustomer, strings.Repeat("c", MaxSubjectLen+1), false},
		{AudienceCustomer, "c\n1", false},
		{AudienceRestaurant, "r1", true},
		{AudienceOps, "alice@dabba", true},
		{AudienceRider, "rider-7", true},
		{AudienceRider, "rider.7", false},
		{AudienceRider, "rider 7", false},
		{AudienceTrack, "6f1c2a8e-4b7d-4e3a-9c1f-2d5e8a7b3c90", true},
		{AudienceTrack, "6F1C2A8E-4B7D-4E3A-9C1F-2D5E8A7B3C90", false},
		{AudienceTrack, "o1", false},
	}
	for _, tt := range tests {
		if err := CheckSubject(tt.aud, tt.sub); (err == nil) != tt.ok {
			t.Errorf("CheckSubject(%s, %q) = %v, want ok %v", tt.aud, tt.sub, err, tt.ok)
		}
	}
}
