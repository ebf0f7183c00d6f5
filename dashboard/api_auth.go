package dashboard

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices"
)

// SessionCookie is the name of the cookie login sets for browsers. Its
// value is the session JWT that login also returns as "token".
const SessionCookie = "tether_session"

// CSRFHeader must be present (any non-empty value, the web UI sends
// "tether") on a cookie-authenticated request that changes something. A
// page on another origin cannot add it without a CORS preflight, which
// the API never grants. Bearer-token requests do not need it.
const CSRFHeader = "X-Requested-With"

// caller is who made a request and with what, as the auth step found it.
type caller struct {
	id devices.Identity
	// token is the bearer token or cookie value (for logout); never log it.
	token string
	// cookie is true when the credentials came in the session cookie.
	cookie bool
}

type callerKey struct{}

// identity returns the authenticated identity of r. On a public route it
// is the zero Identity (whose Can is always false).
func identity(r *http.Request) devices.Identity {
	c, _ := r.Context().Value(callerKey{}).(caller)
	return c.id
}

// requireRole returns a 403 unless r's identity has at least role. The
// route table already enforces each route's role; use this inside a
// handler when one route needs more for some inputs.
func requireRole(r *http.Request, role string) error {
	if !identity(r).Can(role) {
		return forbidden("this needs the " + role + " role")
	}
	return nil
}

// authorize authenticates r for route rt and returns r with the caller in
// its context, or a 401/403.
func (a *API) authorize(rt route, r *http.Request) (*http.Request, error) {
	if rt.Role == public {
		return r, nil
	}
	c, err := a.authenticate(r)
	if err != nil {
		return r, err
	}
	if c.cookie && !safeMethod(r.Method) {
		if err := a.checkCSRF(r, true); err != nil {
			return r, err
		}
	}
	if !c.id.Can(rt.Role) {
		return r, forbidden("this needs the " + rt.Role + " role")
	}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c)), nil
}

// authenticate finds r's credentials: "Authorization: Bearer" (an API
// token or a session JWT) first, else the session cookie.
func (a *API) authenticate(r *http.Request) (caller, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return caller{}, unauthorized("the Authorization header must be \"Bearer TOKEN\"")
		}
		id, err := a.verify(r.Context(), tok)
		if err != nil {
			return caller{}, err
		}
		return caller{id: id, token: tok}, nil
	}
	if ck, err := r.Cookie(SessionCookie); err == nil && ck.Value != "" {
		id, err := a.reg.VerifySession(ck.Value)
		if err != nil {
			return caller{}, credentialError(err)
		}
		return caller{id: id, token: ck.Value, cookie: true}, nil
	}
	return caller{}, unauthorized("authentication required: log in, or send Authorization: Bearer TOKEN")
}

// verify checks a bearer token: an API token ("tth_...") or a session JWT.
func (a *API) verify(ctx context.Context, tok string) (devices.Identity, error) {
	var id devices.Identity
	var err error
	if strings.HasPrefix(tok, devices.TokenPrefix) {
		id, err = a.reg.AuthenticateToken(ctx, tok)
	} else {
		id, err = a.reg.VerifySession(tok)
	}
	if err != nil {
		return id, credentialError(err)
	}
	if id.Kind != devices.KindUser {
		return id, unauthorized("invalid or expired token")
	}
	return id, nil
}

// credentialError maps a failed token check: a bad token is a 401, any
// other failure a 500.
func credentialError(err error) error {
	if errors.Is(err, devices.ErrUnauthorized) || errors.Is(err, devices.ErrNotFound) {
		return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Msg: "invalid or expired token"}
	}
	return err
}

// csrf guards cookie-authenticated requests; net/http's check refuses a
// browser's cross-origin request by its Sec-Fetch-Site or Origin header.
var csrf = http.NewCrossOriginProtection()

// checkCSRF refuses a cross-origin browser request, and, when needHeader,
// one without CSRFHeader.
func (a *API) checkCSRF(r *http.Request, needHeader bool) error {
	if err := csrf.Check(r); err != nil {
		return &apiError{Status: http.StatusForbidden, Code: codeCSRF, Msg: "cross-origin request refused", Err: err}
	}
	if needHeader && r.Header.Get(CSRFHeader) == "" {
		return &apiError{Status: http.StatusForbidden, Code: codeCSRF,
			Msg: "a request authenticated by cookie must send the " + CSRFHeader + " header"}
	}
	return nil
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// loginRequest is the body of POST /auth/login.
type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// loginResponse is what login returns.
type loginResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// Username and Role let the dashboard show only what the user may do.
	Username string `json:"username"`
	Role     string `json:"role"`
}

// login checks a user's password and starts a session: the token in the
// body (for scripts and the dashboard's MQTT password) and in an HttpOnly
// cookie (for the browser's API calls). Repeated failures for one name
// from one address, or from one address for any names, are answered 429
// for a growing while (devices.LoginLimiter, shared with MQTT); a banned
// address, or name at that address, gets 403 (devices.Bans).
func (a *API) login(w http.ResponseWriter, r *http.Request) error {
	if err := a.checkCSRF(r, false); err != nil {
		return err
	}
	var req loginRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if req.Username == "" || req.Password == "" {
		return badRequest(codeInvalid, "username and password are required")
	}
	addr := a.clientIP(r)
	name := req.Username
	if !devices.ValidID(name) || len(req.Password) > devices.MaxPassword {
		// No such user can exist: refuse without a password hash, and
		// keep only a bounded name in the limiter.
		name = ""
	}
	if err := a.bannedLogin(r, name, addr); err != nil {
		return err
	}
	// Begin waits while others' attempts at this key are being checked;
	// an error is the request's context ending meanwhile (the client went
	// away), answered as throttled.
	if wait, err := a.logins.Begin(r.Context(), name, addr); err != nil || wait > 0 {
		wait = max(wait, time.Second)
		a.metrics.logins.WithLabelValues("throttled").Inc()
		a.recordRefusal(r, req.Username, "throttled")
		return &apiError{Status: http.StatusTooManyRequests, Code: codeTooManyRequests,
			Msg: "too many failed logins: try again later", RetryAfter: int(wait.Seconds() + 0.999)}
	}
	defer a.logins.End(name, addr) // once Failed or Succeeded has recorded the attempt
	u, err := devices.User{}, devices.ErrUnauthorized
	if name != "" {
		u, err = a.reg.AuthenticateUser(r.Context(), req.Username, req.Password)
	}
	if errors.Is(err, devices.ErrUnauthorized) || errors.Is(err, devices.ErrNotFound) {
		a.logins.Failed(name, addr)
		a.metrics.logins.WithLabelValues("failed").Inc()
		a.recordRefusal(r, req.Username, "wrong user name or password")
		a.log.Debug("api: login failed", "remote", addr)
		return unauthorized("wrong user name or password")
	}
	if err != nil {
		return err
	}
	a.logins.Succeeded(name, addr)
	tok, exp, err := a.reg.IssueSession(r.Context(), u, a.ttl)
	if errors.Is(err, devices.ErrUnauthorized) {
		// The password or role changed (or the user went) after the
		// password was checked: the session would not belong to
		// credentials that hold.
		a.metrics.logins.WithLabelValues("failed").Inc()
		a.recordRefusal(r, req.Username, "credentials changed during login")
		a.log.Info("api: login refused: the user's password or role changed during it", "user", u.Username, "remote", addr)
		return unauthorized("credentials changed during login: log in again")
	}
	if err != nil {
		return err
	}
	a.metrics.logins.WithLabelValues("ok").Inc()
	a.log.Info("api: login", "user", u.Username, "remote", addr)
	a.record(r, devices.AuditEntry{Action: devices.AuditLogin, Actor: u.Username, Via: "password"})
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    tok,
		Path:     "/",
		Expires:  exp,
		MaxAge:   int(time.Until(exp).Seconds()),
		HttpOnly: true,
		Secure:   a.overTLS(r),
		SameSite: http.SameSiteStrictMode,
	})
	return writeJSON(w, http.StatusOK, loginResponse{Token: tok, ExpiresAt: exp.UTC(), Username: u.Username, Role: u.Role})
}

// logout ends the caller's session, if it is one (an API token stays
// valid: revoke those separately), and clears the cookie.
func (a *API) logout(w http.ResponseWriter, r *http.Request) error {
	c, _ := r.Context().Value(callerKey{}).(caller)
	if !strings.HasPrefix(c.token, devices.TokenPrefix) {
		if err := a.reg.RevokeSession(r.Context(), c.token); err != nil && !errors.Is(err, devices.ErrUnauthorized) {
			return err
		}
	}
	a.record(r, devices.AuditEntry{Action: devices.AuditLogout})
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: a.overTLS(r), SameSite: http.SameSiteStrictMode,
	})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// clientIP is the address a request came from (forwarded.Proxies.ClientIP:
// the peer's, or, from a trusted proxy, the client's it forwarded).
func (a *API) clientIP(r *http.Request) string { return a.proxies.ClientIP(r) }

// overTLS reports whether the client reached us over TLS, directly or
// through a trusted proxy that says so; the session cookie is then Secure.
func (a *API) overTLS(r *http.Request) bool { return a.proxies.OverTLS(r) }
