package dashboard

import (
	"net/http"
	"time"

	"github.com/tether-iot/tether/devices"
)

// DefaultTokenTTL is the life of an API token created without "ttl".
const DefaultTokenTTL = 90 * 24 * time.Hour

// maxTokenTTL bounds "ttl" (seconds): ten years.
const maxTokenTTL = 10 * 365 * 24 * 3600

// tokenRequest is the body of POST /tokens: a token named Name for
// Username (default: the caller; another user's needs the admin role),
// valid TTL seconds (absent: DefaultTokenTTL; 0: until revoked).
type tokenRequest struct {
	Name     string `json:"name"`
	Username string `json:"username"`
	TTL      *int64 `json:"ttl"`
}

// tokenResponse is a new token: its record and, only now, its plaintext.
type tokenResponse struct {
	devices.Token
	Plaintext string `json:"token"`
}

// tokenList is the body of GET /tokens.
type tokenList struct {
	Tokens     []devices.Token `json:"tokens"`
	NextCursor string          `json:"next_cursor"`
}

// listTokens: GET /tokens?username=&limit=&cursor= → an admin sees
// everyone's (or username's), anyone else only their own.
func (a *API) listTokens(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "username", "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	me := identity(r)
	owner := q.Get("username")
	if !me.Can(devices.RoleAdmin) {
		if owner != "" && owner != me.Name {
			return forbidden("only an admin can list other users' tokens")
		}
		owner = me.Name
	}
	list, next, err := a.reg.ListTokens(r.Context(), owner, limit, q.Get("cursor"))
	if err != nil {
		return registryError(err, "token")
	}
	return writeJSON(w, http.StatusOK, tokenList{Tokens: list, NextCursor: next})
}

// createToken: POST /tokens {"name","username"?,"ttl"?} → 201, the token
// record with its plaintext "token", shown only now.
func (a *API) createToken(w http.ResponseWriter, r *http.Request) error {
	var req tokenRequest
	if err := decodeJSON(w, r, maxBody, &req); err != nil {
		return err
	}
	me := identity(r)
	if req.Username == "" {
		req.Username = me.Name
	}
	if req.Username != me.Name && !me.Can(devices.RoleAdmin) {
		return forbidden("only an admin can create a token for another user")
	}
	ttl := DefaultTokenTTL
	if req.TTL != nil {
		if *req.TTL < 0 || *req.TTL > maxTokenTTL {
			return badRequest(codeInvalid, "ttl must be from 0 (no expiry) to %d seconds", maxTokenTTL)
		}
		ttl = time.Duration(*req.TTL) * time.Second
	}
	if req.Name == "" {
		return badRequest(codeInvalid, "name is required")
	}
	plain, t, err := a.reg.CreateToken(r.Context(), req.Username, req.Name, ttl)
	if err != nil {
		return registryError(err, "user")
	}
	a.log.Info("api: token created", "token_id", t.ID, "user", t.Username, "by", me.Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditTokenCreated, Target: t.ID, Detail: "for " + t.Username + ": " + t.Name})
	return writeJSON(w, http.StatusCreated, tokenResponse{Token: t, Plaintext: plain})
}

// revokeToken: DELETE /tokens/{id} → 204: an admin revokes any token,
// anyone else their own (another's is 404, as if it did not exist). The
// connections made with it are closed.
func (a *API) revokeToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if !devices.ValidID(id) {
		return notFound("token")
	}
	me := identity(r)
	t, err := a.reg.TokenByID(r.Context(), id)
	if err != nil {
		return registryError(err, "token")
	}
	if t.Username != me.Name && !me.Can(devices.RoleAdmin) {
		return notFound("token")
	}
	if err := a.reg.RevokeToken(r.Context(), id); err != nil {
		return registryError(err, "token")
	}
	a.log.Info("api: token revoked", "token_id", id, "user", t.Username, "by", me.Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditTokenRevoked, Target: id, Detail: "of " + t.Username + ": " + t.Name})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
