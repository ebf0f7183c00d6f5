package devices

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// sessionIssuer is the JWT "iss" of dashboard sessions.
const sessionIssuer = "tether"

// sessionLeeway is how long past its expiry a session is still accepted,
// for the clocks of the nodes that issue and check it.
const sessionLeeway = 5 * time.Second

// sessionClaims are a session JWT's claims. PasswordVersion ("pwv") ties
// the session to the password it was opened with: a new password (or a
// user deleted and created again) makes every older session invalid.
type sessionClaims struct {
	jwt.RegisteredClaims
	PasswordVersion string `json:"pwv"`
}

// passwordVersion is a keyed digest of a user's password hash: it changes
// with the password and tells nothing about it.
func passwordVersion(key, hash []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(hash)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:12])
}

// loadKey reads the session signing key, creating it on first start.
func (r *Registry) loadKey(ctx context.Context) error {
	var key []byte
	err := r.db.W.QueryRowContext(ctx, `SELECT value FROM registry_keys WHERE name = 'session'`).Scan(&key)
	if err != nil {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		if _, err := r.db.W.ExecContext(ctx, `INSERT INTO registry_keys (name, value) VALUES ('session', ?)
			ON CONFLICT(name) DO NOTHING`, key); err != nil {
			return fmt.Errorf("create session key: %w", err)
		}
		if err := r.db.W.QueryRowContext(ctx, `SELECT value FROM registry_keys WHERE name = 'session'`).Scan(&key); err != nil {
			return fmt.Errorf("read session key: %w", err)
		}
	}
	if len(key) < 32 {
		return errors.New("session key: shorter than 256 bits")
	}
	r.key = key
	return nil
}

// IssueSession returns a dashboard session for u: a JWT (HS256, signed
// with a key generated on first start and kept in the database) with
// subject u.Username, a random jti and an expiry ttl from now. It is the
// login response's token, the cookie's value, a Bearer token and the MQTT
// password over WebSocket.
//
// The session belongs to the password AuthenticateUser checked (u from
// AuthenticateUser or CreateUser; a User made otherwise gets the user's
// password of now). A user whose password or role has changed since that
// check, or who has been deleted (and maybe created again), gets no
// session: ErrUnauthorized, so that a login racing an administrator's
// change cannot come out with a session the change did not end. On a
// shared database (PostgreSQL) the user's row is read again first, for
// another node's change. A change that lands after this check still ends
// the session: VerifySession compares the session's password with the
// user's current one.
func (r *Registry) IssueSession(ctx context.Context, u User, ttl time.Duration) (string, time.Time, error) {
	if ttl <= 0 {
		return "", time.Time{}, fmt.Errorf("issue session: %w", invalid("ttl", "must be positive"))
	}
	r.refreshName(ctx, u.Username) // PostgreSQL: another node's changes
	r.mu.RLock()
	c, ok := r.users[u.Username]
	key := r.key
	r.mu.RUnlock()
	if !ok {
		return "", time.Time{}, fmt.Errorf("issue session for %q: %w: no such user", u.Username, ErrUnauthorized)
	}
	hash := c.hash
	if u.checked != "" {
		if string(c.hash) != u.checked || c.role != u.Role {
			return "", time.Time{}, fmt.Errorf("issue session for %q: %w: password or role changed since it was checked", u.Username, ErrUnauthorized)
		}
		hash = []byte(u.checked)
	}
	now := time.Now()
	exp := now.Add(ttl).Truncate(time.Second)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, sessionClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    sessionIssuer,
			Subject:   u.Username,
			ID:        randomID("", 22),
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
		PasswordVersion: passwordVersion(key, hash),
	})
	s, err := tok.SignedString(key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("issue session: %w", err)
	}
	return s, exp.UTC(), nil
}

// parseSession checks signature, issuer and expiry.
func (r *Registry) parseSession(token string) (*sessionClaims, error) {
	r.mu.RLock()
	key := r.key
	r.mu.RUnlock()
	var c sessionClaims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(sessionIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(sessionLeeway))
	if err != nil || c.ID == "" || c.Subject == "" {
		return nil, ErrUnauthorized
	}
	return &c, nil
}

// VerifySession checks a session JWT's signature, expiry and revocation,
// and that its user still exists with the password the session was
// opened with; the identity carries the user's current role. Any failure
// is ErrUnauthorized. No SQLite query.
func (r *Registry) VerifySession(token string) (Identity, error) {
	c, err := r.parseSession(token)
	if err != nil {
		return Identity{}, fmt.Errorf("verify session: %w", err)
	}
	r.mu.RLock()
	_, revoked := r.revoked[c.ID]
	u, ok := r.users[c.Subject]
	key := r.key
	r.mu.RUnlock()
	if revoked || !ok || !hmac.Equal([]byte(c.PasswordVersion), []byte(passwordVersion(key, u.hash))) {
		return Identity{}, fmt.Errorf("verify session: %w", ErrUnauthorized)
	}
	return Identity{Kind: KindUser, Name: c.Subject, Role: u.role, Via: "session", SessionID: c.ID,
		Expires: c.ExpiresAt.Time.Add(sessionLeeway)}, nil
}

// RevokeSession ends a session (logout): its jti is kept on a revocation
// list, in memory and in the database, until the token would have expired.
// An invalid or expired token is ErrUnauthorized.
func (r *Registry) RevokeSession(ctx context.Context, token string) error {
	c, err := r.parseSession(token)
	if err != nil {
		return fmt.Errorf("revoke session: %w", err)
	}
	exp := c.ExpiresAt.Time.Add(sessionLeeway)
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	now := time.Now()
	if _, err := r.db.W.ExecContext(ctx, `INSERT INTO revoked_sessions (jti, expires_at) VALUES (?, ?)
		ON CONFLICT(jti) DO NOTHING`, c.ID, fmtTime(exp)); err != nil {
		return fmt.Errorf("revoke session: %w", err)
	}
	if _, err := r.db.W.ExecContext(ctx, `DELETE FROM revoked_sessions WHERE expires_at < ?`, fmtTime(now)); err != nil {
		return fmt.Errorf("revoke session: prune: %w", err)
	}
	r.mu.Lock()
	r.revoked[c.ID] = exp
	for jti, e := range r.revoked {
		if e.Before(now) {
			delete(r.revoked, jti)
		}
	}
	r.mu.Unlock()
	r.revoke(Revocation{Name: c.Subject, SessionID: c.ID})
	return nil
}
