package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// withAudit gives the API an audit log (on its own database) and returns
// it through *out.
func withAudit(t *testing.T, out **devices.Audit) func(*APIOptions) {
	t.Helper()
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	au, err := devices.OpenAudit(context.Background(), db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { au.Close(); db.Close() })
	*out = au
	return func(o *APIOptions) { o.Audit = au }
}

// auditEntries returns the audit log through the API, newest first.
func (e *apiEnv) auditEntries() []devices.AuditEntry {
	e.t.Helper()
	res, body := e.do("GET", "/audit?limit=1000", e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusOK)
	return decode[auditList](e.t, body).Entries
}

// hasEntry reports whether entries hold one with action, actor and target.
func hasEntry(entries []devices.AuditEntry, action, actor, target string) bool {
	for _, en := range entries {
		if en.Action == action && en.Actor == actor && en.Target == target && en.Remote != "" && !en.Time.IsZero() {
			return true
		}
	}
	return false
}

// TestAccountRoutesRefuseLesserIdentities: what viewers and operators may
// not do about other accounts.
func TestAccountRoutesRefuseLesserIdentities(t *testing.T) {
	var au *devices.Audit
	e := newAPIEnv(t, withAudit(t, &au))
	before := e.snapshot()
	tests := []struct {
		role, method, path string
		body               any
		want               int
	}{
		{"viewer", "GET", "/audit", nil, 403},
		{"operator", "GET", "/audit", nil, 403},
		{"viewer", "GET", "/tokens?username=admin", nil, 403},
		{"operator", "GET", "/tokens?username=viewer", nil, 403},
		{"viewer", "GET", "/users/admin", nil, 403},
		{"operator", "DELETE", "/users/viewer", nil, 403},
		{"operator", "DELETE", "/users/operator", nil, 403},
		{"viewer", "PATCH", "/users/viewer", map[string]string{"role": "admin"}, 403},
		{"operator", "PATCH", "/users/viewer", map[string]string{"password": "new-password-1"}, 403},
		{"operator", "PATCH", "/users/admin", map[string]string{"password": "new-password-1", "current_password": adminPassword}, 403},
		{"viewer", "PATCH", "/users/viewer", map[string]string{"password": "new-password-1"}, 400},
		{"viewer", "PATCH", "/users/viewer", map[string]string{"password": "new-password-1", "current_password": "wrong-one"}, 403},
		{"viewer", "POST", "/tokens", map[string]string{"name": "x", "username": "operator"}, 403},
		{"admin", "PATCH", "/users/viewer", map[string]string{}, 400},
		{"admin", "PATCH", "/users/viewer", map[string]string{"password": "new-password-1", "current_password": viewerPassword}, 400},
		{"viewer", "PATCH", "/users/viewer", map[string]string{"current_password": viewerPassword}, 400},
		{"admin", "PATCH", "/users/viewer", map[string]string{"role": "root"}, 400},
		{"admin", "PATCH", "/users/viewer", map[string]string{"password": "short"}, 400},
		{"admin", "PATCH", "/users/viewer", `{"role":"admin","extra":1}`, 400},
		{"admin", "PATCH", "/users/nobody", map[string]string{"role": "admin"}, 404},
		{"admin", "DELETE", "/users/nobody", nil, 404},
		{"admin", "DELETE", "/users/..", nil, 404},
		{"admin", "GET", "/audit?limit=0", nil, 400},
		{"admin", "GET", "/audit?cursor=zz", nil, 400},
		{"admin", "GET", "/audit?since=1", nil, 400},
	}
	for _, tc := range tests {
		t.Run(tc.role+" "+tc.method+" "+tc.path, func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do(tc.method, tc.path, e.tokens[tc.role], tc.body)
			e.mustStatus(res, body, tc.want)
		})
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("refused requests changed users or devices:\n%s\n---\n%s", before, after)
	}
	// Each still has their own token, unchanged.
	for role, tok := range e.tokens {
		res, body := e.do("GET", "/auth/me", tok, nil)
		e.mustStatus(res, body, http.StatusOK)
		if me := decode[meResponse](t, body); me.Username != role || me.Role != role || me.Via != "token" {
			t.Fatalf("me %+v, want %s", me, role)
		}
	}
}

func TestLastAdminIsKept(t *testing.T) {
	e := newAPIEnv(t)
	admin := e.tokens["admin"]
	res, body := e.do("DELETE", "/users/admin", admin, nil)
	e.mustStatus(res, body, http.StatusConflict)
	if eb := checkErrorBody(t, res, body); !strings.Contains(eb.Error.Message, "last admin") {
		t.Fatalf("message %q does not say why", eb.Error.Message)
	}
	res, body = e.do("PATCH", "/users/admin", admin, map[string]string{"role": "viewer"})
	e.mustStatus(res, body, http.StatusConflict)
	// With a second admin, the first can go.
	res, body = e.do("PATCH", "/users/operator", admin, map[string]string{"role": "admin"})
	e.mustStatus(res, body, http.StatusOK)
	if u := decode[devices.User](t, body); u.Role != devices.RoleAdmin {
		t.Fatalf("promoted %+v", u)
	}
	res, body = e.do("DELETE", "/users/admin", e.tokens["operator"], nil)
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices", admin, nil)
	e.mustStatus(res, body, http.StatusUnauthorized)
	res, body = e.do("PATCH", "/users/operator", e.tokens["operator"], map[string]string{"role": "viewer"})
	e.mustStatus(res, body, http.StatusConflict)
}

func TestChangeOwnPassword(t *testing.T) {
	e := newAPIEnv(t)
	sess := e.login("viewer", viewerPassword)
	other := e.login("viewer", viewerPassword)
	res, body := e.do("GET", "/users/viewer", sess, nil)
	e.mustStatus(res, body, http.StatusOK)
	res, body = e.do("PATCH", "/users/viewer", sess, map[string]string{"password": "brand-new-pw", "current_password": viewerPassword})
	e.mustStatus(res, body, http.StatusOK)
	// Every session of the user ends; the API token lives on.
	for _, s := range []string{sess, other} {
		res, body = e.do("GET", "/devices", s, nil)
		e.mustStatus(res, body, http.StatusUnauthorized)
	}
	res, body = e.do("GET", "/devices", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusOK)
	res, body = e.do("POST", "/auth/login", "", map[string]string{"username": "viewer", "password": viewerPassword})
	e.mustStatus(res, body, http.StatusUnauthorized)
	e.login("viewer", "brand-new-pw")
	// An admin changes anyone's password without knowing it.
	res, body = e.do("PATCH", "/users/viewer", e.tokens["admin"], map[string]string{"password": "set-by-admin"})
	e.mustStatus(res, body, http.StatusOK)
	e.login("viewer", "set-by-admin")
	if strings.Contains(e.logs.String(), "set-by-admin") || strings.Contains(e.logs.String(), "brand-new-pw") {
		t.Fatal("a password is in the log")
	}
}

func TestWrongCurrentPasswordIsSlowedDown(t *testing.T) {
	e := newAPIEnv(t)
	for i := 0; i < e.api.logins.Options().PairFree; i++ {
		res, body := e.do("PATCH", "/users/viewer", e.tokens["viewer"], map[string]string{"password": "new-password-1", "current_password": "guess-" + string(rune('a'+i))})
		e.mustStatus(res, body, http.StatusForbidden)
	}
	res, body := e.do("PATCH", "/users/viewer", e.tokens["viewer"], map[string]string{"password": "new-password-1", "current_password": viewerPassword})
	e.mustStatus(res, body, http.StatusTooManyRequests)
}

func TestTokensOwnAndAll(t *testing.T) {
	e := newAPIEnv(t)
	// Without ttl a token expires in 90 days; ttl 0 never.
	res, body := e.do("POST", "/tokens", e.tokens["viewer"], map[string]any{"name": "laptop"})
	e.mustStatus(res, body, http.StatusCreated)
	mine := decode[tokenResponse](t, body)
	if mine.Username != "viewer" || mine.ExpiresAt == nil ||
		mine.ExpiresAt.Sub(mine.CreatedAt) != DefaultTokenTTL || !strings.HasPrefix(mine.Plaintext, devices.TokenPrefix) {
		t.Fatalf("default token %s", body)
	}
	res, body = e.do("POST", "/tokens", e.tokens["admin"], map[string]any{"name": "forever", "username": "operator", "ttl": 0})
	e.mustStatus(res, body, http.StatusCreated)
	forever := decode[tokenResponse](t, body)
	if forever.ExpiresAt != nil || forever.Username != "operator" {
		t.Fatalf("ttl 0 token %s", body)
	}
	list := func(tok, q string) []devices.Token {
		t.Helper()
		res, body := e.do("GET", "/tokens"+q, tok, nil)
		e.mustStatus(res, body, http.StatusOK)
		if strings.Contains(string(body), devices.TokenPrefix) {
			t.Fatalf("a token list shows a plaintext: %s", body)
		}
		return decode[tokenList](t, body).Tokens
	}
	if got := list(e.tokens["viewer"], ""); len(got) != 2 { // "test" and "laptop"
		t.Fatalf("viewer sees %+v", got)
	}
	for _, tk := range list(e.tokens["viewer"], "") {
		if tk.Username != "viewer" {
			t.Fatalf("viewer sees someone else's token %+v", tk)
		}
	}
	if got := list(e.tokens["admin"], ""); len(got) != 5 {
		t.Fatalf("admin sees %d tokens, want 5", len(got))
	}
	if got := list(e.tokens["admin"], "?username=operator"); len(got) != 2 {
		t.Fatalf("admin filtering by user sees %+v", got)
	}
	// Paging.
	res, body = e.do("GET", "/tokens?limit=2", e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusOK)
	if p := decode[tokenList](t, body); len(p.Tokens) != 2 || p.NextCursor == "" {
		t.Fatalf("page 1: %s", body)
	}
	// A viewer cannot revoke another's token (it looks absent) ...
	res, body = e.do("DELETE", "/tokens/"+forever.ID, e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusNotFound)
	res, body = e.do("GET", "/devices", forever.Plaintext, nil)
	e.mustStatus(res, body, http.StatusOK)
	// ... but their own, and an admin any.
	res, body = e.do("DELETE", "/tokens/"+mine.ID, e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices", mine.Plaintext, nil)
	e.mustStatus(res, body, http.StatusUnauthorized)
	res, body = e.do("DELETE", "/tokens/"+forever.ID, e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices", forever.Plaintext, nil)
	e.mustStatus(res, body, http.StatusUnauthorized)
	res, body = e.do("DELETE", "/tokens/"+forever.ID, e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusNotFound)
	for _, b := range []any{map[string]any{"name": "x", "ttl": maxTokenTTL + 1}, map[string]any{"name": strings.Repeat("n", 1000)}} {
		res, body = e.do("POST", "/tokens", e.tokens["viewer"], b)
		e.mustStatus(res, body, http.StatusBadRequest)
	}
}

// TestRevocationNotices: deleting a user, revoking a token and changing a
// role or password each tell the registry's listeners (the broker closes
// the MQTT connections they match).
func TestRevocationNotices(t *testing.T) {
	e := newAPIEnv(t)
	var mu sync.Mutex
	var got []devices.Revocation
	e.reg.OnRevoke(func(rv devices.Revocation) { mu.Lock(); got = append(got, rv); mu.Unlock() })
	res, body := e.do("POST", "/tokens", e.tokens["operator"], map[string]any{"name": "x"})
	e.mustStatus(res, body, http.StatusCreated)
	tok := decode[tokenResponse](t, body)
	for _, step := range []struct {
		method, path string
		body         any
	}{
		{"DELETE", "/tokens/" + tok.ID, nil},
		{"PATCH", "/users/operator", map[string]string{"role": "viewer"}},
		{"PATCH", "/users/operator", map[string]string{"password": "another-pw-1"}},
		{"DELETE", "/users/operator", nil},
	} {
		res, body := e.do(step.method, step.path, e.tokens["admin"], step.body)
		if res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", step.method, step.path, res.StatusCode, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// A role or password change closes connections; only deleting the
	// user purges their sessions too.
	want := []devices.Revocation{{Name: "operator", TokenID: tok.ID}, {Name: "operator"}, {Name: "operator"}, {Name: "operator", Purge: true}}
	if len(got) != len(want) {
		t.Fatalf("revocations %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("revocations %+v, want %+v", got, want)
		}
	}
}

func TestAuditRecordsEachStep(t *testing.T) {
	var au *devices.Audit
	e := newAPIEnv(t, withAudit(t, &au))
	admin := e.tokens["admin"]
	res, body := e.do("POST", "/auth/login", "", map[string]string{"username": "viewer", "password": "wrong-password"})
	e.mustStatus(res, body, http.StatusUnauthorized)
	sess := e.login("viewer", viewerPassword)
	d := e.createDevice(devices.NewDevice{ID: "a1"})
	steps := []struct {
		method, path, token string
		body                any
	}{
		{"PATCH", "/devices/a1", admin, map[string]any{"enabled": false}},
		{"POST", "/devices/a1/secret", admin, nil},
		{"DELETE", "/devices/a1", admin, nil},
		{"POST", "/users", admin, map[string]string{"username": "zed", "password": "zed-password", "role": "viewer"}},
		{"PATCH", "/users/zed", admin, map[string]string{"role": "operator"}},
		{"PATCH", "/users/zed", admin, map[string]string{"password": "zed-password-2"}},
		{"POST", "/tokens", admin, map[string]any{"name": "for-zed", "username": "zed"}},
		{"DELETE", "/users/zed", admin, nil},
		{"POST", "/auth/logout", sess, nil},
	}
	var tokenID string
	for _, s := range steps {
		res, body := e.do(s.method, s.path, s.token, s.body)
		if res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, res.StatusCode, body)
		}
		if s.path == "/tokens" {
			tr := decode[tokenResponse](t, body)
			tokenID = tr.ID
			res, body = e.do("DELETE", "/tokens/"+tr.ID, e.tokens["viewer"], nil) // not the viewer's
			e.mustStatus(res, body, http.StatusNotFound)
		}
	}
	res, body = e.do("POST", "/tokens", e.tokens["viewer"], map[string]any{"name": "own"})
	e.mustStatus(res, body, http.StatusCreated)
	own := decode[tokenResponse](t, body)
	res, body = e.do("DELETE", "/tokens/"+own.ID, e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusNoContent)

	var entries []devices.AuditEntry
	want := []struct{ action, actor, target string }{
		{devices.AuditLoginRefused, "viewer", ""},
		{devices.AuditLogin, "viewer", ""},
		{devices.AuditDeviceCreated, "admin", d.ID},
		{devices.AuditDeviceUpdated, "admin", "a1"},
		{devices.AuditSecretRotated, "admin", "a1"},
		{devices.AuditDeviceDeleted, "admin", "a1"},
		{devices.AuditUserCreated, "admin", "zed"},
		{devices.AuditRoleChanged, "admin", "zed"},
		{devices.AuditPasswordChanged, "admin", "zed"},
		{devices.AuditTokenCreated, "admin", tokenID},
		{devices.AuditUserDeleted, "admin", "zed"},
		{devices.AuditLogout, "viewer", ""},
		{devices.AuditTokenCreated, "viewer", own.ID},
		{devices.AuditTokenRevoked, "viewer", own.ID},
	}
	testmqtt.CheckFor(t, 5*time.Second, func() error { // refusals are written in the background
		entries = e.auditEntries()
		for _, w := range want {
			if !hasEntry(entries, w.action, w.actor, w.target) {
				return fmt.Errorf("no audit entry %s %s %s in %+v", w.action, w.actor, w.target, entries)
			}
		}
		return nil
	})
	all := ""
	for _, en := range entries {
		all += en.Actor + en.Via + en.Target + en.Detail + "\n"
		if en.Action == devices.AuditRoleChanged && en.Detail != "viewer -> operator" {
			t.Errorf("role change detail %q", en.Detail)
		}
		if en.Action == devices.AuditDeviceUpdated && en.Detail != "enabled=false" {
			t.Errorf("device update detail %q", en.Detail)
		}
	}
	for _, secret := range []string{"wrong-password", viewerPassword, "zed-password", d.Secret, own.Plaintext, sess, admin} {
		if strings.Contains(all, secret) {
			t.Fatalf("a secret is in the audit log: %s", all)
		}
	}
	// Paging with a cursor reaches every entry once.
	seen := map[int64]bool{}
	cursor := ""
	for {
		res, body := e.do("GET", "/audit?limit=3&cursor="+cursor, admin, nil)
		e.mustStatus(res, body, http.StatusOK)
		l := decode[auditList](t, body)
		for _, en := range l.Entries {
			if seen[en.ID] {
				t.Fatalf("entry %d twice", en.ID)
			}
			seen[en.ID] = true
		}
		if cursor = l.NextCursor; cursor == "" {
			break
		}
	}
	if len(seen) < len(entries) {
		t.Fatalf("paging saw %d of %d entries", len(seen), len(entries))
	}
	res, body = e.do("GET", "/audit?action=user_deleted", admin, nil)
	e.mustStatus(res, body, http.StatusOK)
	if l := decode[auditList](t, body); len(l.Entries) != 1 || l.Entries[0].Target != "zed" {
		t.Fatalf("filtered: %s", body)
	}
}

func TestAuditUnavailableWithoutStore(t *testing.T) {
	e := newAPIEnv(t)
	res, body := e.do("GET", "/audit", e.tokens["admin"], nil)
	e.mustStatus(res, body, http.StatusServiceUnavailable)
}

// TestTokenChurnBounded: a user's tokens created in an hour, revoked ones
// included, are bounded (devices.MaxTokensPerUserPerHour); beyond, 429
// with Retry-After, and other users go on. Each creation and revocation
// is an audit entry kept 90 days: a viewer creating and revoking tokens
// in a loop wrote 816 pairs a second from one client.
func TestTokenChurnBounded(t *testing.T) {
	e := newAPIEnv(t)
	created := 1 // withUsers gave the viewer its token
	for ; created <= devices.MaxTokensPerUserPerHour; created++ {
		res, body := e.do("POST", "/tokens", e.tokens["viewer"], map[string]any{"name": "churn"})
		if res.StatusCode == http.StatusTooManyRequests {
			break
		}
		e.mustStatus(res, body, 201)
		tok := decode[tokenResponse](t, body)
		res, body = e.do("DELETE", "/tokens/"+tok.ID, e.tokens["viewer"], nil)
		e.mustStatus(res, body, 204)
	}
	if created != devices.MaxTokensPerUserPerHour {
		t.Fatalf("refused after %d tokens created, want %d", created, devices.MaxTokensPerUserPerHour)
	}
	res, body := e.do("POST", "/tokens", e.tokens["viewer"], map[string]any{"name": "churn"})
	e.mustStatus(res, body, http.StatusTooManyRequests)
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3600 {
		t.Fatalf("Retry-After %q", res.Header.Get("Retry-After"))
	}
	res, body = e.do("POST", "/tokens", e.tokens["operator"], map[string]any{"name": "mine"})
	e.mustStatus(res, body, 201)
}
