package devices

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// mustSign signs a session for user expiring at exp with r's key.
func mustSign(t *testing.T, r *Registry, user string, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: sessionIssuer, Subject: user, ID: "forged", ExpiresAt: jwt.NewNumericDate(exp),
	}).SignedString(r.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
