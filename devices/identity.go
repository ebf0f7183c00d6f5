package devices

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Kinds of Identity.
const (
	KindDevice = "device"
	KindUser   = "user"
)

// Roles of users, each including the one before.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// Identity is who a set of credentials belongs to.
type Identity struct {
	// Kind is KindDevice or KindUser.
	Kind string `json:"kind"`
	// Name is the device id or the user name.
	Name string `json:"name"`
	// Role is the user's role; empty for a device.
	Role string `json:"role,omitempty"`
	// Via says what authenticated it: "secret", "password", "token" or
	// "session".
	Via string `json:"via,omitempty"`
	// SessionID is the session JWT's id (jti) when Via is "session", for
	// logout.
	SessionID string `json:"-"`
	// TokenID is the API token's id when Via is "token".
	TokenID string `json:"-"`
	// Expires is when the session or API token it was authenticated with
	// stops being accepted (a session at its expiry plus the leeway its
	// check allows); zero for credentials that do not expire. The broker
	// ends the connection then.
	Expires time.Time `json:"-"`
}

// Can reports whether the identity's role is at least role. Devices have
// no role.
func (id Identity) Can(role string) bool {
	return id.Kind == KindUser && roleRank(id.Role) >= roleRank(role)
}

func roleRank(r string) int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Authenticate checks one MQTT username and password (or API bearer, with
// an empty username) and says whose they are:
//   - a device: username = device id, password = its secret;
//   - a user: username = user name, password = the password, an API token
//     or a session JWT (the dashboard over WebSocket).
//
// With an empty username, password must be an API token or a session JWT.
// Devices are checked against the in-memory cache: no SQLite query and no
// slow hash. Any failure is ErrUnauthorized.
func (r *Registry) Authenticate(ctx context.Context, username, password string) (Identity, error) {
	if password == "" {
		return Identity{}, fmt.Errorf("authenticate: %w", ErrUnauthorized)
	}
	d := digest(password)
	r.refreshName(ctx, username) // PostgreSQL: another node's changes
	r.mu.RLock()
	dev, isDevice := r.devices[username]
	_, isUser := r.users[username]
	r.mu.RUnlock()
	switch {
	case isDevice:
		if !sameDigest(d, dev.digest) || !dev.enabled {
			return Identity{}, fmt.Errorf("authenticate: %w", ErrUnauthorized)
		}
		return Identity{Kind: KindDevice, Name: username, Via: "secret"}, nil
	case isUser || username == "":
		var id Identity
		var err error
		switch shape := tokenShape(password); {
		case shape == shapeToken:
			id, err = r.AuthenticateToken(ctx, password)
		case shape == shapeSession:
			id, err = r.VerifySession(password)
		case username != "":
			var u User
			u, err = r.AuthenticateUser(ctx, username, password)
			id = Identity{Kind: KindUser, Name: u.Username, Role: u.Role, Via: "password"}
		default:
			err = ErrUnauthorized
		}
		if err != nil || (username != "" && id.Name != username) {
			return Identity{}, fmt.Errorf("authenticate: %w", ErrUnauthorized)
		}
		return id, nil
	}
	return Identity{}, fmt.Errorf("authenticate: %w", ErrUnauthorized)
}

// Shapes of an MQTT password (tokenShape).
const (
	shapePassword = iota
	shapeToken    // an API token: "tth_…"
	shapeSession  // a session JWT: three dot-separated parts, "eyJ…"
)

// tokenShape says how Authenticate reads a password given with a user
// name: as an API token, a session JWT, or a password. A user's password
// must have the password shape (CheckPassword), or it could never log in.
func tokenShape(password string) int {
	switch {
	case strings.HasPrefix(password, TokenPrefix):
		return shapeToken
	case strings.Count(password, ".") == 2 && strings.HasPrefix(password, "eyJ"):
		return shapeSession
	}
	return shapePassword
}

// Lookup returns the identity name stands for now, from the in-memory
// cache: an enabled device, or a user with its current role. ok is false
// for an unknown name and for a disabled device. The broker uses it to
// re-check rights that may have changed since a client connected, and to
// learn who owns a session restored from storage.
func (r *Registry) Lookup(name string) (id Identity, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if d, isDevice := r.devices[name]; isDevice {
		return Identity{Kind: KindDevice, Name: name}, d.enabled
	}
	if u, isUser := r.users[name]; isUser {
		return Identity{Kind: KindUser, Name: name, Role: u.role}, true
	}
	return Identity{}, false
}

// HasDevice reports whether id is a registered device (enabled or not).
// It reads the in-memory cache.
func (r *Registry) HasDevice(id string) bool {
	r.mu.RLock()
	_, ok := r.devices[id]
	r.mu.RUnlock()
	return ok
}
