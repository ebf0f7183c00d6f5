package devices

import (
	"context"
	"database/sql"
	"errors"

	"github.com/tether-iot/tether/devices/database"
)

// On PostgreSQL other nodes write the same tables, so the caches are read
// through at login: Authenticate and AuthenticateUser read the name's
// device and user rows again, AuthenticateToken the token's row, and what
// another node created, changed or deleted counts from the next login on.
// Between logins the broker's checks (Lookup, grants) use this node's
// cache; carrying another node's changes to clients already connected is
// the cluster bus's job. If the database does not answer, the cache
// decides.

// shared reports a database other nodes may write (PostgreSQL).
func (r *Registry) shared() bool { return r.db.Dialect == database.Postgres }

// refreshName reloads the cached device and user called name.
func (r *Registry) refreshName(ctx context.Context, name string) {
	if !r.shared() || name == "" {
		return
	}
	var h []byte
	var topics string
	var dev deviceCred
	errDev := r.db.R.QueryRowContext(ctx, `SELECT secret_hash, enabled, type, topics FROM devices WHERE id = ?`, name).
		Scan(&h, &dev.enabled, &dev.typ, &topics)
	var hash string
	var user userCred
	errUser := r.db.R.QueryRowContext(ctx, `SELECT password_hash, role FROM users WHERE username = ?`, name).
		Scan(&hash, &user.role)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case errDev == nil:
		copy(dev.digest[:], h)
		dev.topics = decodeGrants(topics)
		r.devices[name] = dev
	case errors.Is(errDev, sql.ErrNoRows):
		delete(r.devices, name)
	}
	switch {
	case errUser == nil:
		user.hash = []byte(hash)
		r.users[name] = user
	case errors.Is(errUser, sql.ErrNoRows):
		delete(r.users, name)
	}
	if err := errors.Join(skipNoRows(errDev), skipNoRows(errUser)); err != nil {
		r.log.Warn("registry: reading an identity from the database failed; using the cache", "error", err)
	}
}

// refreshToken reloads the cached token with digest d and its owner.
func (r *Registry) refreshToken(ctx context.Context, d [32]byte) {
	if !r.shared() {
		return
	}
	var c tokenCred
	var exp sql.NullString
	err := r.db.R.QueryRowContext(ctx, `SELECT id, username, expires_at FROM api_tokens WHERE digest = ?`, d[:]).
		Scan(&c.id, &c.username, &exp)
	switch {
	case err == nil:
		if exp.Valid {
			c.expires, _ = parseTime(exp.String)
		}
		r.mu.Lock()
		r.tokens[d] = c
		r.mu.Unlock()
		r.refreshName(ctx, c.username)
	case errors.Is(err, sql.ErrNoRows):
		r.mu.Lock()
		delete(r.tokens, d)
		r.mu.Unlock()
	default:
		r.log.Warn("registry: reading a token from the database failed; using the cache", "error", err)
	}
}

func skipNoRows(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	return err
}
