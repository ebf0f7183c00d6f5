package devices

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

// loadCaches reads every device, user, API token and revoked session into
// new caches and puts them in place of the old ones: at start-up, and on
// PostgreSQL whenever the registry's notifications (registry_shared.go)
// may have missed something. It returns what changed since the old
// caches, for connections to learn (cacheChanges).
func (r *Registry) loadCaches(ctx context.Context) (cacheChanges, error) {
	devs := map[string]deviceCred{}
	users := map[string]userCred{}
	tokens := map[[32]byte]tokenCred{}
	revoked := map[string]time.Time{}
	rows, err := r.db.R.QueryContext(ctx, `SELECT id, secret_hash, enabled, type, topics FROM devices`)
	if err != nil {
		return cacheChanges{}, fmt.Errorf("load devices: %w", err)
	}
	for rows.Next() {
		var id string
		var h []byte
		var topics string
		var c deviceCred
		if err := rows.Scan(&id, &h, &c.enabled, &c.typ, &topics); err != nil {
			rows.Close()
			return cacheChanges{}, fmt.Errorf("load devices: %w", err)
		}
		copy(c.digest[:], h)
		c.topics = decodeGrants(topics)
		devs[id] = c
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return cacheChanges{}, fmt.Errorf("load devices: %w", err)
	}
	rows, err = r.db.R.QueryContext(ctx, `SELECT username, password_hash, role FROM users`)
	if err != nil {
		return cacheChanges{}, fmt.Errorf("load users: %w", err)
	}
	for rows.Next() {
		var name, h string
		var c userCred
		if err := rows.Scan(&name, &h, &c.role); err != nil {
			rows.Close()
			return cacheChanges{}, fmt.Errorf("load users: %w", err)
		}
		c.hash = []byte(h)
		users[name] = c
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return cacheChanges{}, fmt.Errorf("load users: %w", err)
	}
	rows, err = r.db.R.QueryContext(ctx, `SELECT id, digest, username, expires_at FROM api_tokens`)
	if err != nil {
		return cacheChanges{}, fmt.Errorf("load tokens: %w", err)
	}
	for rows.Next() {
		var h []byte
		var exp sql.NullString
		var c tokenCred
		if err := rows.Scan(&c.id, &h, &c.username, &exp); err != nil {
			rows.Close()
			return cacheChanges{}, fmt.Errorf("load tokens: %w", err)
		}
		if exp.Valid {
			c.expires, _ = parseTime(exp.String)
		}
		var d [32]byte
		copy(d[:], h)
		tokens[d] = c
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return cacheChanges{}, fmt.Errorf("load tokens: %w", err)
	}
	rows, err = r.db.R.QueryContext(ctx, `SELECT jti, expires_at FROM revoked_sessions`)
	if err != nil {
		return cacheChanges{}, fmt.Errorf("load revoked sessions: %w", err)
	}
	for rows.Next() {
		var jti, exp string
		if err := rows.Scan(&jti, &exp); err != nil {
			rows.Close()
			return cacheChanges{}, fmt.Errorf("load revoked sessions: %w", err)
		}
		t, _ := parseTime(exp)
		revoked[jti] = t
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return cacheChanges{}, fmt.Errorf("load revoked sessions: %w", err)
	}
	r.mu.Lock()
	ch := diffCaches(r.devices, devs, r.users, users, r.tokens, tokens)
	r.devices, r.users, r.tokens, r.revoked = devs, users, tokens, revoked
	r.mu.Unlock()
	return ch, nil
}

// cacheChanges are what connections must learn of a reload: the
// revocations (OnRevoke) and the devices whose type or grants changed
// (OnDeviceChange). A logout is not among them (revoked sessions do not
// name their user): it counts at the session's next use.
type cacheChanges struct {
	revoked []Revocation
	changed []string
}

// diffCaches compares the caches before and after a reload.
func diffCaches(oldDevs, devs map[string]deviceCred, oldUsers, users map[string]userCred, oldTokens, tokens map[[32]byte]tokenCred) cacheChanges {
	var ch cacheChanges
	for id, o := range oldDevs {
		n, ok := devs[id]
		switch {
		case !ok || (o.enabled && !n.enabled):
			ch.revoked = append(ch.revoked, Revocation{Name: id, Purge: true})
		case n.digest != o.digest:
			ch.revoked = append(ch.revoked, Revocation{Name: id})
		case n.typ != o.typ || !slices.Equal(n.topics, o.topics):
			ch.changed = append(ch.changed, id)
		}
	}
	for name, o := range oldUsers {
		n, ok := users[name]
		switch {
		case !ok:
			ch.revoked = append(ch.revoked, Revocation{Name: name, Purge: true})
		case n.role != o.role || !bytes.Equal(n.hash, o.hash):
			ch.revoked = append(ch.revoked, Revocation{Name: name})
		}
	}
	for d, o := range oldTokens {
		if _, ok := tokens[d]; !ok {
			ch.revoked = append(ch.revoked, Revocation{Name: o.username, TokenID: o.id})
		}
	}
	return ch
}
