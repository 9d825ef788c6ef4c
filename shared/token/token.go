// Package token mints and checks Dabba's bearer tokens: JWTs signed with
// HS256. A tracking token lets a customer watch one order (sub = order id,
// aud = "track"); a rider token lets a rider post fixes as themself
// (sub = rider id, aud = "rider").
package token

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// Audiences of Dabba's tokens.
const (
	AudienceTrack = "track"
	AudienceRider = "rider"
)

// devSecret signs tokens when TOKEN_SECRET is unset: fine on a laptop,
// never in production (SecretFromEnv warns).
const devSecret = "dabba-development-secret-do-not-use-in-production"

// ErrInvalid is returned for any token that must not be accepted: bad
// signature, other algorithm, wrong audience or subject, expired.
var ErrInvalid = errors.New("invalid token")

// SecretFromEnv returns TOKEN_SECRET, or a development default with a warning.
func SecretFromEnv(getenv func(string) string, log *zap.Logger) []byte {
	if s := getenv("TOKEN_SECRET"); s != "" {
		return []byte(s)
	}
	log.Warn("TOKEN_SECRET is unset: signing tokens with the development secret")
	return []byte(devSecret)
}

// Signer mints and verifies tokens with one secret.
type Signer struct {
	secret []byte
}

// NewSigner returns a signer for secret.
func NewSigner(secret []byte) *Signer { return &Signer{secret: secret} }

func (s *Signer) mint(subject, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   subject,
		Audience:  jwt.ClaimStrings{audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

// verify checks tok's signature (HS256 only), expiry and audience, and
// returns its subject.
func (s *Signer) verify(tok, audience string) (string, error) {
	claims := jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return s.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithAudience(audience),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second))
	if err != nil || claims.Subject == "" {
		return "", ErrInvalid
	}
	return claims.Subject, nil
}

// Tracking mints the token that lets its holder watch order orderID.
func (s *Signer) Tracking(orderID string, ttl time.Duration) (string, error) {
	return s.mint(orderID, AudienceTrack, ttl)
}

// VerifyTracking checks that tok is a valid tracking token for orderID.
func (s *Signer) VerifyTracking(tok, orderID string) error {
	sub, err := s.verify(tok, AudienceTrack)
	if err != nil {
		return err
	}
	if sub != orderID {
		return ErrInvalid
	}
	return nil
}

// Rider mints a token for rider riderID.
func (s *Signer) Rider(riderID string, ttl time.Duration) (string, error) {
	return s.mint(riderID, AudienceRider, ttl)
}

// VerifyRider checks tok and returns the rider it was minted for.
func (s *Signer) VerifyRider(tok string) (string, error) {
	return s.verify(tok, AudienceRider)
}
