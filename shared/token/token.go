// Package token mints and checks Dabba's bearer tokens: JWTs signed with
// HS256 and TOKEN_SECRET, carrying sub, aud, iat and exp. The audience is
// the holder's role and the subject who they are:
//
//	customer    customer id     places orders, reads and cancels its own
//	restaurant  restaurant id   its feed, its menu, its orders' moves
//	rider       rider id        its fixes, the moves of the orders assigned to it
//	ops         operator id     everything, on any order; assigns riders
//	track       order id        that order's tracking socket, page and status
package token

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"go.uber.org/zap"
)

// Audiences of Dabba's tokens: the roles.
const (
	AudienceCustomer   = "customer"
	AudienceRestaurant = "restaurant"
	AudienceRider      = "rider"
	AudienceOps        = "ops"
	AudienceTrack      = "track"
)

// Audiences lists every audience a token may carry.
var Audiences = []string{AudienceCustomer, AudienceRestaurant, AudienceRider, AudienceOps, AudienceTrack}

// MinSecretLen is the shortest TOKEN_SECRET a service accepts outside
// development mode: HS256 wants a key of at least the hash's 32 bytes.
const MinSecretLen = 32

// DevSecret signs tokens in development mode when TOKEN_SECRET is unset:
// it is in this repository, so a service outside development mode refuses
// it.
const DevSecret = "dabba-development-secret-do-not-use-in-production"

// DevModeVar is the variable that puts a service in development mode
// (make run sets it): an unset or short TOKEN_SECRET is then only a
// warning.
const DevModeVar = "DEV_MODE"

// ErrInvalid is returned for any token that must not be accepted: bad
// signature, other algorithm, unknown or several audiences, no subject,
// expired.
var ErrInvalid = errors.New("invalid token")

// DevMode reports whether getenv puts a service in development mode.
func DevMode(getenv func(string) string) bool { return getenv(DevModeVar) == "1" }

// SecretFromEnv returns the service's signing secret, TOKEN_SECRET. Outside
// development mode it must be at least MinSecretLen bytes and not the
// development secret, or the service must not start. In development mode an
// unset secret means DevSecret, and a short one is allowed; both with a
// warning.
func SecretFromEnv(getenv func(string) string, log *zap.Logger) ([]byte, error) {
	s, dev := getenv("TOKEN_SECRET"), DevMode(getenv)
	switch {
	case s == "" && dev:
		log.Warn("TOKEN_SECRET is unset: signing tokens with the development secret (DEV_MODE=1)")
		return []byte(DevSecret), nil
	case s == "":
		return nil, fmt.Errorf("TOKEN_SECRET is unset: set a random secret of at least %d bytes (or DEV_MODE=1 on a laptop)", MinSecretLen)
	case s == DevSecret && !dev:
		return nil, errors.New("TOKEN_SECRET is the development secret, which is public: set a random one")
	case len(s) < MinSecretLen && !dev:
		return nil, fmt.Errorf("TOKEN_SECRET is %d bytes: use a random secret of at least %d", len(s), MinSecretLen)
	case len(s) < MinSecretLen:
		log.Warn("TOKEN_SECRET is shorter than a production secret may be (DEV_MODE=1)", zap.Int("min_bytes", MinSecretLen))
	}
	return []byte(s), nil
}

// ClientSecret returns the secret a tool that mints tokens for a stack
// signs with (dabba token, make demo): TOKEN_SECRET, or the development
// secret that make run's stack uses; dev reports the latter.
func ClientSecret(getenv func(string) string) (secret []byte, dev bool) {
	if s := getenv("TOKEN_SECRET"); s != "" {
		return []byte(s), false
	}
	return []byte(DevSecret), true
}

// Claims are what a verified token says: the holder's role (its audience)
// and who they are (its subject).
type Claims struct {
	Audience string
	Subject  string
}

// Signer mints and verifies tokens with one secret.
type Signer struct {
	secret []byte
}

// NewSigner returns a signer for secret.
func NewSigner(secret []byte) *Signer { return &Signer{secret: secret} }

// Mint returns a token for subject in audience, valid for ttl.
func (s *Signer) Mint(audience, subject string, ttl time.Duration) (string, error) {
	if !slices.Contains(Audiences, audience) {
		return "", fmt.Errorf("mint token: unknown audience %q", audience)
	}
	if subject == "" {
		return "", errors.New("mint token: empty subject")
	}
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

// Verify checks tok's signature (HS256 only) and expiry, and returns its
// audience and subject. A token must name exactly one known audience: one
// that named two roles would be both at once.
func (s *Signer) Verify(tok string) (Claims, error) {
	claims := jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return s.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second))
	if err != nil || claims.Subject == "" || len(claims.Audience) != 1 || !slices.Contains(Audiences, claims.Audience[0]) {
		return Claims{}, ErrInvalid
	}
	return Claims{Audience: claims.Audience[0], Subject: claims.Subject}, nil
}

// Tracking mints the token that lets its holder watch order orderID.
func (s *Signer) Tracking(orderID string, ttl time.Duration) (string, error) {
	return s.Mint(AudienceTrack, orderID, ttl)
}

// Rider mints a token for rider riderID.
func (s *Signer) Rider(riderID string, ttl time.Duration) (string, error) {
	return s.Mint(AudienceRider, riderID, ttl)
}

// MaxSubjectLen bounds a subject: the services keep ids of at most 128
// bytes.
const MaxSubjectLen = 128

// CheckSubject reports why sub cannot be the subject of a token of
// audience, or nil: a track token names an order (a UUID, as the services
// spell it), a rider's id becomes part of a routing key ("rider.<id>"), and
// no id is empty, longer than MaxSubjectLen or holds control characters.
func CheckSubject(audience, sub string) error {
	if audience == AudienceTrack {
		if id, err := uuid.Parse(sub); err != nil || id.String() != sub {
			return fmt.Errorf("a track token's subject is an order id (a lower-case UUID), not %q", sub)
		}
		return nil
	}
	if sub == "" || len(sub) > MaxSubjectLen || strings.IndexFunc(sub, unicode.IsControl) >= 0 {
		return fmt.Errorf("a subject is 1 to %d bytes without control characters", MaxSubjectLen)
	}
	if audience == AudienceRider && strings.ContainsAny(sub, ".*#/ ") {
		return fmt.Errorf("a rider id has no '.', '*', '#', '/' or spaces: %q", sub)
	}
	return nil
}
