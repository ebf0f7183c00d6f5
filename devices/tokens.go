package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token is an API token for scripts: long-lived, revocable, stored as a
// SHA-256 digest. Its plaintext ("tth_" and 43 base64url characters) is
// shown once, by CreateToken. It acts with its owner's role.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Username  string     `json:"username"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// TokenPrefix starts every API token's plaintext.
const TokenPrefix = "tth_"

// MaxTokensPerUser bounds the API tokens one user holds (expired ones
// count until revoked).
const MaxTokensPerUser = 100

// MaxTokensPerUserPerHour bounds the tokens created for one user in an
// hour, revoked ones included (counted by each node): creating and
// revoking tokens, each an audit entry kept for audit.retention, cost a
// viewer nothing, 816 pairs a second from one client (830 KB/s of audit
// log and token rows, 90 days' worth).
const MaxTokensPerUserPerHour = 2 * MaxTokensPerUser

// RateError is a request refused because too many like it came lately:
// one more is taken after RetryAfter.
type RateError struct {
	Msg        string
	RetryAfter time.Duration
}

func (e *RateError) Error() string { return e.Msg }

// CreateToken issues a token for username named name (a label for people);
// ttl 0 means it never expires. Returns the plaintext, shown only now.
func (r *Registry) CreateToken(ctx context.Context, username, name string, ttl time.Duration) (string, Token, error) {
	plain, t, err := r.createToken(ctx, username, name, ttl)
	if err != nil {
		return "", Token{}, fmt.Errorf("create token: %w", err)
	}
	r.log.Info("api token created", "user", username, "token_id", t.ID)
	return plain, t, nil
}

func (r *Registry) createToken(ctx context.Context, username, name string, ttl time.Duration) (string, Token, error) {
	if err := checkText("name", name, MaxName); err != nil {
		return "", Token{}, err
	}
	if ttl < 0 {
		return "", Token{}, invalid("ttl", "must not be negative")
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.RLock()
	_, ok := r.users[username]
	n := 0
	for _, t := range r.tokens {
		if t.username == username {
			n++
		}
	}
	r.mu.RUnlock()
	if !ok {
		return "", Token{}, fmt.Errorf("user %q: %w", username, ErrNotFound)
	}
	if n >= MaxTokensPerUser {
		return "", Token{}, invalid("username", "%q has %d tokens already: revoke some first", username, n)
	}
	now := time.Now()
	made := r.tokensMade[username]
	for len(made) > 0 && now.Sub(made[0]) >= time.Hour {
		made = made[1:]
	}
	if len(made) >= MaxTokensPerUserPerHour {
		return "", Token{}, &RateError{RetryAfter: made[0].Add(time.Hour).Sub(now),
			Msg: fmt.Sprintf("%d tokens were created for %q in the last hour: try again later", len(made), username)}
	}
	plain := TokenPrefix + newSecret()
	d := digest(plain)
	t := Token{ID: randomID("tok-", 12), Name: name, Username: username, CreatedAt: time.Now().UTC()}
	var exp sql.NullString
	if ttl > 0 {
		e := t.CreatedAt.Add(ttl)
		t.ExpiresAt = &e
		exp = sql.NullString{String: fmtTime(e), Valid: true}
	}
	if _, err := r.db.W.ExecContext(ctx, `INSERT INTO api_tokens (id, digest, name, username, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
		t.ID, d[:], name, username, fmtTime(t.CreatedAt), exp); err != nil {
		return "", Token{}, err
	}
	c := tokenCred{id: t.ID, username: username}
	if t.ExpiresAt != nil {
		c.expires = *t.ExpiresAt
	}
	r.mu.Lock()
	r.tokens[d] = c
	r.mu.Unlock()
	if r.tokensMade == nil {
		r.tokensMade = map[string][]time.Time{}
	}
	r.tokensMade[username] = append(made, now)
	return plain, t, nil
}

// ListTokens returns one page of username's tokens (all users' when
// username is ""), ordered by id (limit 0 means 100, at most MaxPage), and
// the next cursor ("" on the last page).
func (r *Registry) ListTokens(ctx context.Context, username string, limit int, cursor string) ([]Token, string, error) {
	limit, after, err := page(limit, cursor)
	if err != nil {
		return nil, "", fmt.Errorf("list tokens: %w", err)
	}
	rows, err := r.db.R.QueryContext(ctx, `SELECT id, name, username, created_at, expires_at FROM api_tokens
		WHERE (? = '' OR username = ?) AND id > ? ORDER BY id LIMIT ?`, username, username, after, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	out := []Token{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list tokens: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = encodeCursor(out[limit-1].ID)
	}
	return out, next, nil
}

// TokenByID returns the record of the token with id, or ErrNotFound.
func (r *Registry) TokenByID(ctx context.Context, id string) (Token, error) {
	t, err := scanToken(r.db.R.QueryRowContext(ctx, `SELECT id, name, username, created_at, expires_at FROM api_tokens WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Token{}, fmt.Errorf("token %q: %w", id, err)
	}
	return t, nil
}

func scanToken(row interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var created string
	var exp sql.NullString
	if err := row.Scan(&t.ID, &t.Name, &t.Username, &created, &exp); err != nil {
		return Token{}, err
	}
	t.CreatedAt, _ = parseTime(created)
	if e, ok := parseTime(exp.String); exp.Valid && ok {
		t.ExpiresAt = &e
	}
	return t, nil
}

// AuthenticateToken returns the identity of an API token's owner; an
// unknown, expired or revoked token is ErrUnauthorized. No SQLite query
// (one on PostgreSQL: registry_shared.go).
func (r *Registry) AuthenticateToken(ctx context.Context, token string) (Identity, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return Identity{}, fmt.Errorf("authenticate token: %w", ErrUnauthorized)
	}
	d := digest(token)
	r.refreshToken(ctx, d) // PostgreSQL: another node's changes
	r.mu.RLock()
	t, ok := r.tokens[d]
	u, uok := r.users[t.username]
	r.mu.RUnlock()
	// The map lookup is by digest, so it reveals nothing about the
	// plaintext.
	if !ok || !uok || (!t.expires.IsZero() && time.Now().After(t.expires)) {
		return Identity{}, fmt.Errorf("authenticate token: %w", ErrUnauthorized)
	}
	return Identity{Kind: KindUser, Name: t.username, Role: u.role, Via: "token", TokenID: t.id, Expires: t.expires}, nil
}

// RevokeToken deletes the token with id, or returns ErrNotFound.
func (r *Registry) RevokeToken(ctx context.Context, id string) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	res, err := r.db.W.ExecContext(ctx, `DELETE FROM api_tokens WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("revoke token %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("revoke token %q: %w", id, ErrNotFound)
	}
	var owner string
	r.mu.Lock()
	for d, t := range r.tokens {
		if t.id == id {
			owner = t.username
			delete(r.tokens, d)
		}
	}
	r.mu.Unlock()
	r.log.Info("api token revoked", "token_id", id)
	if owner != "" {
		r.revoke(Revocation{Name: owner, TokenID: id})
	}
	return nil
}
