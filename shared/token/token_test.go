package token

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestVerifyTracking(t *testing.T) {
	s := NewSigner([]byte("secret"))
	good, _ := s.Tracking("o1", time.Hour)
	expired, _ := s.Tracking("o1", -time.Minute)
	rider, _ := s.Rider("o1", time.Hour)
	other, _ := NewSigner([]byte("other")).Tracking("o1", time.Hour)
	claims := jwt.RegisteredClaims{Subject: "o1", Audience: jwt.ClaimStrings{"track"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// Signed with the right secret but another algorithm: only HS256 is
	// accepted, so a token's header cannot choose how it is checked.
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, claims).SignedString([]byte("secret"))
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "o1", Audience: jwt.ClaimStrings{"track"}}).
		SignedString([]byte("secret"))
	noSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"track"},
		ExpiresAt: claims.ExpiresAt}).SignedString([]byte("secret"))
	tests := []struct {
		name, give, order string
		ok                bool
	}{
		{"OK", good, "o1", true},
		{"ErrOtherOrder", good, "o2", false},
		{"ErrExpired", expired, "o1", false},
		{"ErrRiderToken", rider, "o1", false},
		{"ErrOtherSecret", other, "o1", false},
		{"ErrAlgNone", none, "o1", false},
		{"ErrAlgHS512", hs512, "o1", false},
		{"ErrNoExpiry", noExp, "o1", false},
		{"ErrNoSubject", noSub, "", false},
		{"ErrGarbage", "not.a.jwt", "o1", false},
		{"ErrEmpty", "", "o1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.VerifyTracking(tt.give, tt.order)
			if tt.ok != (err == nil) {
				t.Fatalf("VerifyTracking = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
		})
	}
}

func TestVerifyRider(t *testing.T) {
	s := NewSigner([]byte("secret"))
	tok, _ := s.Rider("rider-7", time.Hour)
	if id, err := s.VerifyRider(tok); err != nil || id != "rider-7" {
		t.Fatalf("VerifyRider = %q, %v", id, err)
	}
	track, _ := s.Tracking("rider-7", time.Hour)
	if _, err := s.VerifyRider(track); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a tracking token passed as a rider token: %v", err)
	}
}

func TestSecretFromEnv(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	log := zap.New(core)
	if got := SecretFromEnv(func(string) string { return "" }, log); len(got) == 0 || logs.Len() != 1 {
		t.Fatalf("unset: secret %q, %d warnings; want the development secret and a warning", got, logs.Len())
	}
	getenv := func(k string) string { return map[string]string{"TOKEN_SECRET": "s3cret"}[k] }
	if got := SecretFromEnv(getenv, log); string(got) != "s3cret" || logs.Len() != 1 {
		t.Fatalf("set: secret %q, %d warnings", got, logs.Len())
	}
}
