package token

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestVerifyTracking(t *testing.T) {
	s := NewSigner([]byte("secret"))
	good, _ := s.Tracking("o1", time.Hour)
	expired, _ := s.Tracking("o1", -time.Minute)
	rider, _ := s.Rider("o1", time.Hour)
	other, _ := NewSigner([]byte("other")).Tracking("o1", time.Hour)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Subject: "o1", Audience: jwt.ClaimStrings{"track"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
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
