package devices

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/tether-iot/tether/devices/database"
)

// On PostgreSQL other nodes write the same tables, so the caches are read
// through at login: Authenticate and AuthenticateUser read the name's
// device and user rows again, AuthenticateToken the token's row, and what
// another node created, changed or deleted counts from the next login on.
// Between logins the broker's checks (Lookup, grants) use this node's
// cache, which PostgreSQL's notifications keep current: each change a
// node commits that connections care about (a revocation, a device's new
// type or grants) is sent to the others (share), which read the identity
// again and tell their callbacks, so a device deleted on one node is
// disconnected from another. When the notifications' connection was lost
// the caches are read again whole and compared with the old ones
// (diffCaches), the differences going to the callbacks. If the database does not answer, the
// cache decides (logged at debug: /readyz reports the outage).

// shared reports a database other nodes may write (PostgreSQL).
func (r *Registry) shared() bool { return r.db.Dialect == database.Postgres }

// Refresh reads the device or user called name again into the cache
// from a shared database (PostgreSQL), where another node may have
// created it since this node last read it: a node that takes a session
// over from another one does so for the session's owner. No-op on
// SQLite.
func (r *Registry) Refresh(ctx context.Context, name string) { r.refreshName(ctx, name) }

// refreshName reloads the cached device and user called name, in one
// query.
func (r *Registry) refreshName(ctx context.Context, name string) {
	if !r.shared() || name == "" {
		return
	}
	rows, err := r.db.R.QueryContext(ctx, `
		SELECT 'd', secret_hash, enabled, type, topics, '', '' FROM devices WHERE id = ?
		UNION ALL
		SELECT 'u', NULL, 0, '', '', password_hash, role FROM users WHERE username = ?`, name, name)
	if err != nil {
		r.log.Debug("registry: reading an identity from the database failed; using the cache", "error", err)
		return
	}
	defer rows.Close()
	var dev *deviceCred
	var user *userCred
	for rows.Next() {
		var kind, topics, hash, role string
		var h []byte
		var c deviceCred
		if err := rows.Scan(&kind, &h, &c.enabled, &c.typ, &topics, &hash, &role); err != nil {
			r.log.Debug("registry: reading an identity from the database failed; using the cache", "error", err)
			return
		}
		if kind == "d" {
			copy(c.digest[:], h)
			c.topics = decodeGrants(topics)
			dev = &c
		} else {
			user = &userCred{hash: []byte(hash), role: role}
		}
	}
	if err := rows.Err(); err != nil {
		r.log.Debug("registry: reading an identity from the database failed; using the cache", "error", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if dev != nil {
		r.devices[name] = *dev
	} else {
		delete(r.devices, name)
	}
	if user != nil {
		r.users[name] = *user
	} else {
		delete(r.users, name)
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
		r.log.Debug("registry: reading a token from the database failed; using the cache", "error", err)
	}
}

// registryChannel is the PostgreSQL notification channel of registry
// changes.
const registryChannel = "tether_registry"

// A note tells the other nodes what this one changed, after the commit:
// they read the identity again and tell their own callbacks (OnRevoke,
// OnDeviceChange), so that a device deleted on one node is disconnected
// from another.
type note struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	SessionID string `json:"session_id,omitempty"`
	TokenID   string `json:"token_id,omitempty"`
	Purge     bool   `json:"purge,omitempty"`
}

const (
	noteRevoke = "revoke"
	noteChange = "change"
)

// startSharing listens for the other nodes' notes (PostgreSQL only). Each
// time the listener (re)connects the caches are read again whole, and
// what changed while nobody listened goes to the callbacks.
func (r *Registry) startSharing() {
	r.notes = startNotes(r.db, registryChannel, r.log, func(ctx context.Context) {
		r.writeMu.Lock()
		ch, err := r.loadCaches(ctx)
		r.writeMu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("registry: reloading identities failed", "error", err)
			}
			return
		}
		for _, rv := range ch.revoked {
			r.fireRevoke(rv)
		}
		for _, id := range ch.changed {
			r.fireChanged(id)
		}
	}, r.received)
}

// share sends n to the other nodes.
func (r *Registry) share(n note) { r.notes.send(n) }

// received applies another node's note.
func (r *Registry) received(ctx context.Context, body []byte) {
	var n note
	if err := json.Unmarshal(body, &n); err != nil || n.Name == "" {
		return
	}
	switch n.Kind {
	case noteChange:
		r.refreshName(ctx, n.Name)
		r.fireChanged(n.Name)
	case noteRevoke:
		switch {
		case n.TokenID != "":
			r.mu.Lock()
			for d, t := range r.tokens {
				if t.id == n.TokenID {
					delete(r.tokens, d)
				}
			}
			r.mu.Unlock()
		case n.SessionID != "":
			var exp string
			if err := r.db.R.QueryRowContext(ctx, `SELECT expires_at FROM revoked_sessions WHERE jti = ?`, n.SessionID).Scan(&exp); err == nil {
				t, _ := parseTime(exp)
				r.mu.Lock()
				r.revoked[n.SessionID] = t
				r.mu.Unlock()
			}
		default:
			r.refreshName(ctx, n.Name)
		}
		r.fireRevoke(Revocation{Name: n.Name, SessionID: n.SessionID, TokenID: n.TokenID, Purge: n.Purge})
	}
}
