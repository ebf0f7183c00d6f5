package dashboard

import (
	"net/http"
	"time"

	"github.com/tether-iot/tether/devices"
)

// userRequest is the body of POST /users.
type userRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Role     string `json:"role"`
}

// userList is the body of GET /users.
type userList struct {
	Users      []devices.User `json:"users"`
	NextCursor string         `json:"next_cursor"`
}

// tokenRequest is the body of POST /tokens: a token named Name for
// Username (default: the caller), valid TTL seconds (0: until revoked).
type tokenRequest struct {
	Name     string `json:"name"`
	Username string `json:"username"`
	TTL      int64  `json:"ttl"`
}

// tokenResponse is a new token: its record and, only now, its plaintext.
type tokenResponse struct {
	devices.Token
	Plaintext string `json:"token"`
}

// listUsers: GET /users?limit=&cursor=
func (a *API) listUsers(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	list, next, err := a.reg.ListUsers(r.Context(), limit, q.Get("cursor"))
	if err != nil {
		return registryError(err, "user")
	}
	if list == nil {
		list = []devices.User{}
	}
	writeJSON(w, http.StatusOK, userList{Users: list, NextCursor: next})
	return nil
}

// createUser: POST /users {"username","password","role"} → 201, the user
// (without the password).
func (a *API) createUser(w http.ResponseWriter, r *http.Request) error {
	var req userRequest
	if err := decodeJSON(w, r, maxBody, &req); err != nil {
		return err
	}
	switch req.Role {
	case devices.RoleViewer, devices.RoleOperator, devices.RoleAdmin:
	default:
		return badRequest(codeInvalid, "role must be viewer, operator or admin")
	}
	u, err := a.reg.CreateUser(r.Context(), req.Username, req.Password, req.Role)
	if err != nil {
		return registryError(err, "user")
	}
	a.log.Info("api: user created", "user", u.Username, "role", u.Role, "by", identity(r).Name)
	writeJSON(w, http.StatusCreated, u)
	return nil
}

// createToken: POST /tokens {"name","username"?,"ttl"?} → 201, the token
// record with its plaintext "token", shown only now.
func (a *API) createToken(w http.ResponseWriter, r *http.Request) error {
	var req tokenRequest
	if err := decodeJSON(w, r, maxBody, &req); err != nil {
		return err
	}
	if req.Username == "" {
		req.Username = identity(r).Name
	}
	const maxTTL = 10 * 365 * 24 * 3600
	if req.TTL < 0 || req.TTL > maxTTL {
		return badRequest(codeInvalid, "ttl must be from 0 (no expiry) to %d seconds", maxTTL)
	}
	if req.Name == "" {
		return badRequest(codeInvalid, "name is required")
	}
	plain, t, err := a.reg.CreateToken(r.Context(), req.Username, req.Name, time.Duration(req.TTL)*time.Second)
	if err != nil {
		return registryError(err, "user")
	}
	a.log.Info("api: token created", "token_id", t.ID, "user", t.Username, "by", identity(r).Name)
	writeJSON(w, http.StatusCreated, tokenResponse{Token: t, Plaintext: plain})
	return nil
}
