package dashboard

import (
	"errors"
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

// userPatch is the body of PATCH /users/{name}. CurrentPassword proves a
// user who is not an admin is changing their own password.
type userPatch struct {
	Password        *string `json:"password"`
	Role            *string `json:"role"`
	CurrentPassword *string `json:"current_password"`
}

// userList is the body of GET /users.
type userList struct {
	Users      []devices.User `json:"users"`
	NextCursor string         `json:"next_cursor"`
}

// meResponse is the body of GET /auth/me.
type meResponse struct {
	Username string `json:"username"`
	Role     string `json:"role"`
	// Via is how the request authenticated: "session" or "token".
	Via string `json:"via"`
}

// me: GET /auth/me → who the credentials belong to.
func (a *API) me(w http.ResponseWriter, r *http.Request) error {
	id := identity(r)
	return writeJSON(w, http.StatusOK, meResponse{Username: id.Name, Role: id.Role, Via: id.Via})
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
	return writeJSON(w, http.StatusOK, userList{Users: list, NextCursor: next})
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
	a.record(r, devices.AuditEntry{Action: devices.AuditUserCreated, Target: u.Username, Detail: "role " + u.Role})
	return writeJSON(w, http.StatusCreated, u)
}

// pathUser returns the {name} of r, the user it names, checking that the
// caller is that user or an admin.
func pathUser(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if !devices.ValidID(name) {
		return "", notFound("user")
	}
	if me := identity(r); me.Name != name && !me.Can(devices.RoleAdmin) {
		return "", forbidden("only an admin can see or change another user")
	}
	return name, nil
}

// getUser: GET /users/{name}: an admin any user, anyone else themselves.
func (a *API) getUser(w http.ResponseWriter, r *http.Request) error {
	name, err := pathUser(r)
	if err != nil {
		return err
	}
	u, err := a.reg.User(r.Context(), name)
	if err != nil {
		return registryError(err, "user")
	}
	return writeJSON(w, http.StatusOK, u)
}

// updateUser: PATCH /users/{name} {"password"?,"role"?,"current_password"?}
// → the user. An admin changes anyone's password and role; anyone else
// only their own password, proving it with current_password (failures are
// slowed down like failed logins). The last admin cannot be demoted (409).
// A new password ends the user's sessions, the caller's included; a new
// password or role closes the user's MQTT connections.
func (a *API) updateUser(w http.ResponseWriter, r *http.Request) error {
	name, err := pathUser(r)
	if err != nil {
		return err
	}
	var p userPatch
	if err := decodeJSON(w, r, maxBody, &p); err != nil {
		return err
	}
	me := identity(r)
	admin := me.Can(devices.RoleAdmin)
	switch {
	case p.Password == nil && p.Role == nil:
		return badRequest(codeInvalid, "nothing to change: give password and/or role")
	case p.Role != nil && !admin:
		return forbidden("changing a role needs the admin role")
	case p.CurrentPassword != nil && (p.Password == nil || name != me.Name):
		return badRequest(codeInvalid, "current_password goes only with a new password of your own")
	case p.CurrentPassword == nil && !admin:
		return badRequest(codeInvalid, "current_password is required to change your own password")
	}
	if p.CurrentPassword != nil {
		if err := a.checkCurrentPassword(r, name, *p.CurrentPassword); err != nil {
			return err
		}
	}
	before, err := a.reg.User(r.Context(), name)
	if err != nil {
		return registryError(err, "user")
	}
	u, err := a.reg.UpdateUser(r.Context(), name, devices.UserUpdate{Password: p.Password, Role: p.Role})
	if err != nil {
		return registryError(err, "user")
	}
	if p.Password != nil {
		a.log.Info("api: password changed", "user", name, "by", me.Name)
		a.record(r, devices.AuditEntry{Action: devices.AuditPasswordChanged, Target: name})
	}
	if u.Role != before.Role {
		a.log.Info("api: role changed", "user", name, "role", u.Role, "by", me.Name)
		a.record(r, devices.AuditEntry{Action: devices.AuditRoleChanged, Target: name, Detail: before.Role + " -> " + u.Role})
	}
	return writeJSON(w, http.StatusOK, u)
}

// checkCurrentPassword checks name's password, through the login
// limiter: guessing it is slowed down exactly like guessing at login.
func (a *API) checkCurrentPassword(r *http.Request, name, password string) error {
	addr := a.clientIP(r)
	// Begin waits while others' attempts at this key are being checked;
	// an error is the request's context ending meanwhile (the client went
	// away), answered as throttled.
	if wait, err := a.logins.Begin(r.Context(), name, addr); err != nil || wait > 0 {
		wait = max(wait, time.Second)
		return &apiError{Status: http.StatusTooManyRequests, Code: codeTooManyRequests,
			Msg: "too many wrong passwords: try again later", RetryAfter: int(wait.Seconds() + 0.999)}
	}
	defer a.logins.End(name, addr)
	if len(password) > devices.MaxPassword {
		password = ""
	}
	_, err := a.reg.AuthenticateUser(r.Context(), name, password)
	if errors.Is(err, devices.ErrUnauthorized) {
		a.logins.Failed(name, addr)
		a.recordRefusal(r, name, "wrong current_password")
		return forbidden("current_password is wrong")
	}
	if err != nil {
		return err
	}
	a.logins.Succeeded(name, addr)
	return nil
}

// deleteUser: DELETE /users/{name} → 204. The user's tokens and sessions
// end and their MQTT connections close; the last admin cannot be deleted
// (409).
func (a *API) deleteUser(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if !devices.ValidID(name) {
		return notFound("user")
	}
	if err := a.reg.DeleteUser(r.Context(), name); err != nil {
		return registryError(err, "user")
	}
	a.log.Info("api: user deleted", "user", name, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditUserDeleted, Target: name})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
