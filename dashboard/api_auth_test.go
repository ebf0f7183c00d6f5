package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
)

func TestLoginReturnsTokenAndCookie(t *testing.T) {
	e := newAPIEnv(t)
	res, body := e.do("POST", "/auth/login", "", map[string]string{"username": "operator", "password": operatorPassword})
	e.mustStatus(res, body, http.StatusOK)
	lr := decode[loginResponse](t, body)
	if lr.Token == "" || !lr.ExpiresAt.After(time.Now()) {
		t.Fatalf("login response %s", body)
	}
	if lr.Username != "operator" || lr.Role != devices.RoleOperator {
		t.Fatalf("login response names %q with role %q, want operator/operator", lr.Username, lr.Role)
	}
	var ck *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == SessionCookie {
			ck = c
		}
	}
	switch {
	case ck == nil:
		t.Fatal("no session cookie")
	case ck.Value != lr.Token, !ck.HttpOnly, ck.SameSite != http.SameSiteStrictMode, ck.Secure:
		t.Fatalf("cookie %+v", ck)
	}
	// The token is a bearer token.
	res, body = e.do("GET", "/devices", lr.Token, nil)
	e.mustStatus(res, body, http.StatusOK)
}

func TestLoginRefusals(t *testing.T) {
	e := newAPIEnv(t)
	tests := []struct {
		name string
		body any
		want int
	}{
		{"wrong password", map[string]string{"username": "admin", "password": "wrong-password"}, 401},
		{"unknown user", map[string]string{"username": "nobody", "password": "whatever-pw"}, 401},
		{"missing password", map[string]string{"username": "admin"}, 400},
		{"unknown field", `{"username":"admin","password":"x","remember":true}`, 400},
		{"two values", `{"username":"admin","password":"x"}{}`, 400},
		{"not json", `username=admin`, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do("POST", "/auth/login", "", tc.body)
			e.mustStatus(res, body, tc.want)
			if len(res.Cookies()) != 0 {
				t.Fatal("a failed login set a cookie")
			}
		})
	}
}

func TestLoginSlowedDownAfterFailures(t *testing.T) {
	e := newAPIEnv(t)
	lo := e.api.logins.Options()
	bad := map[string]string{"username": "viewer", "password": "wrong-password"}
	for i := 0; i < lo.PairFree; i++ {
		res, body := e.do("POST", "/auth/login", "", bad)
		e.mustStatus(res, body, http.StatusUnauthorized)
	}
	// Now even the right password is refused for a while from this
	// address, without being checked.
	good := map[string]string{"username": "viewer", "password": viewerPassword}
	res, body := e.do("POST", "/auth/login", "", good)
	e.mustStatus(res, body, http.StatusTooManyRequests)
	if res.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	// Another name from the same address is not refused: the address has
	// its own, larger allowance.
	res, body = e.do("POST", "/auth/login", "", map[string]string{"username": "admin", "password": adminPassword})
	e.mustStatus(res, body, http.StatusOK)
	if got := e.counter("tether_api_logins_total", "failed"); got != float64(lo.PairFree) {
		t.Fatalf("failed logins counted %v, want %d", got, lo.PairFree)
	}
	if got := e.counter("tether_api_logins_total", "throttled"); got != 1 {
		t.Fatalf("throttled logins counted %v, want 1", got)
	}
	e.advance(lo.Base + time.Millisecond)
	res, body = e.do("POST", "/auth/login", "", good)
	e.mustStatus(res, body, http.StatusOK)
	if got := e.counter("tether_api_logins_total", "ok"); got != 2 {
		t.Fatalf("good logins counted %v, want 2", got)
	}
}

func TestCookieAuthNeedsCSRFProof(t *testing.T) {
	e := newAPIEnv(t)
	cookie := SessionCookie + "=" + e.login("admin", adminPassword)
	tests := []struct {
		name    string
		method  string
		path    string
		body    any
		headers []string
		want    int
	}{
		{"cookie read", "GET", "/devices", nil, []string{"Cookie", cookie}, 200},
		{"cookie write without header", "POST", "/devices", map[string]string{"id": "c1"}, []string{"Cookie", cookie}, 403},
		{"cookie write with header", "POST", "/devices", map[string]string{"id": "c2"}, []string{"Cookie", cookie, CSRFHeader, "tether"}, 201},
		{"cookie write cross-site", "POST", "/devices", map[string]string{"id": "c3"},
			[]string{"Cookie", cookie, CSRFHeader, "tether", "Sec-Fetch-Site", "cross-site"}, 403},
		{"cookie write foreign origin", "POST", "/devices", map[string]string{"id": "c4"},
			[]string{"Cookie", cookie, CSRFHeader, "tether", "Origin", "https://evil.example"}, 403},
		{"cookie write same origin", "POST", "/devices", map[string]string{"id": "c5"},
			[]string{"Cookie", cookie, CSRFHeader, "tether", "Sec-Fetch-Site", "same-origin"}, 201},
		{"cookie delete without header", "DELETE", "/devices/c2", nil, []string{"Cookie", cookie}, 403},
		{"bearer write needs no header", "POST", "/devices", map[string]string{"id": "c6"}, nil, 201},
		{"login from a foreign page", "POST", "/auth/login", map[string]string{"username": "admin", "password": adminPassword},
			[]string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"bad cookie", "GET", "/devices", nil, []string{"Cookie", SessionCookie + "=forged"}, 401},
		{"no credentials", "GET", "/devices", nil, nil, 401},
		{"basic auth", "GET", "/devices", nil, []string{"Authorization", "Basic YWRtaW46eA=="}, 401},
		{"forged bearer", "GET", "/devices", nil, []string{"Authorization", "Bearer tth_forged"}, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer e.use(t)()
			token := ""
			if strings.HasPrefix(tc.name, "bearer") {
				token = e.tokens["admin"]
			}
			res, body := e.do(tc.method, tc.path, token, tc.body, tc.headers...)
			e.mustStatus(res, body, tc.want)
			if tc.want == 403 && checkErrorBody(t, res, body).Error.Code != codeCSRF {
				t.Fatalf("refusal code: %s", body)
			}
		})
	}
	// Refused requests stored nothing.
	for _, id := range []string{"c1", "c3", "c4"} {
		res, body := e.do("GET", "/devices/"+id, e.tokens["admin"], nil)
		e.mustStatus(res, body, 404)
	}
}

func TestRolesEnforced(t *testing.T) {
	e := newAPIEnv(t)
	e.createDevice(devices.NewDevice{ID: "r1"})
	tests := []struct {
		role, method, path string
		body               any
		want               int
	}{
		{"viewer", "GET", "/devices", nil, 200},
		{"viewer", "GET", "/devices/r1", nil, 200},
		{"viewer", "GET", "/broker", nil, 503}, // allowed; no broker in this test
		{"viewer", "POST", "/devices", map[string]string{"id": "r2"}, 403},
		{"viewer", "PATCH", "/devices/r1", map[string]any{"enabled": false}, 403},
		{"viewer", "DELETE", "/devices/r1", nil, 403},
		{"viewer", "POST", "/devices/r1/secret", nil, 403},
		{"viewer", "GET", "/users", nil, 403},
		{"viewer", "POST", "/tokens", map[string]string{"name": "x", "username": "admin"}, 403},
		{"operator", "GET", "/devices", nil, 200},
		{"operator", "POST", "/devices", map[string]string{"id": "r3"}, 403},
		{"operator", "POST", "/devices/bulk", map[string]any{"devices": []any{map[string]string{"id": "r4"}}}, 403},
		{"operator", "POST", "/users", map[string]string{"username": "u1", "password": "password-1", "role": "admin"}, 403},
		{"admin", "POST", "/devices", map[string]string{"id": "r5"}, 201},
		{"admin", "GET", "/users", nil, 200},
		{"admin", "POST", "/devices/r1/secret", nil, 200},
	}
	for _, tc := range tests {
		t.Run(tc.role+" "+tc.method+" "+tc.path, func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do(tc.method, tc.path, e.tokens[tc.role], tc.body)
			e.mustStatus(res, body, tc.want)
		})
	}
}

func TestLogoutEndsSession(t *testing.T) {
	e := newAPIEnv(t)
	tok := e.login("viewer", viewerPassword)
	other := e.login("viewer", viewerPassword)
	res, body := e.do("POST", "/auth/logout", tok, nil)
	e.mustStatus(res, body, http.StatusNoContent)
	cleared := false
	for _, c := range res.Cookies() {
		cleared = cleared || c.Name == SessionCookie && c.MaxAge < 0
	}
	if !cleared {
		t.Fatal("logout did not clear the cookie")
	}
	res, body = e.do("GET", "/devices", tok, nil)
	e.mustStatus(res, body, http.StatusUnauthorized)
	// Other sessions of the same user live on.
	res, body = e.do("GET", "/devices", other, nil)
	e.mustStatus(res, body, http.StatusOK)
	// Logging out with an API token leaves the token valid.
	res, body = e.do("POST", "/auth/logout", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusOK)
	// Cookie logout needs the CSRF header like any change.
	res, body = e.do("POST", "/auth/logout", "", nil, "Cookie", SessionCookie+"="+other)
	e.mustStatus(res, body, http.StatusForbidden)
	res, body = e.do("POST", "/auth/logout", "", nil, "Cookie", SessionCookie+"="+other, CSRFHeader, "tether")
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices", "", nil, "Cookie", SessionCookie+"="+other)
	e.mustStatus(res, body, http.StatusUnauthorized)
}

func TestAPITokens(t *testing.T) {
	e := newAPIEnv(t)
	res, body := e.do("POST", "/tokens", e.tokens["admin"], map[string]any{"name": "ci", "username": "viewer", "ttl": 3600})
	e.mustStatus(res, body, http.StatusCreated)
	tr := decode[map[string]any](t, body)
	tok, _ := tr["token"].(string)
	if !strings.HasPrefix(tok, devices.TokenPrefix) || tr["username"] != "viewer" || tr["name"] != "ci" || tr["id"] == "" {
		t.Fatalf("token response %s", body)
	}
	res, body = e.do("GET", "/devices", tok, nil)
	e.mustStatus(res, body, http.StatusOK)
	res, body = e.do("POST", "/devices", tok, map[string]string{"id": "t1"})
	e.mustStatus(res, body, http.StatusForbidden)
	// Bad token requests.
	for _, b := range []any{
		map[string]any{"name": "x", "username": "nobody"},
		map[string]any{"name": "x", "ttl": -1},
		map[string]any{"username": "viewer"},
		`{"name":"x","ttl":"1h"}`,
	} {
		res, body = e.do("POST", "/tokens", e.tokens["admin"], b)
		if res.StatusCode < 400 || res.StatusCode >= 500 {
			t.Fatalf("token request %v: %d %s", b, res.StatusCode, body)
		}
		checkErrorBody(t, res, body)
	}
	if strings.Contains(e.logs.String(), tok) {
		t.Fatal("an API token is in the log")
	}
}

func TestClientIPBehindTrustedProxy(t *testing.T) {
	a, err := NewAPI(APIOptions{Registry: &devices.Registry{}, TrustedProxies: []string{"10.0.0.0/8", "192.168.1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		remote, xff, want string
	}{
		{"203.0.113.5:1234", "", "203.0.113.5"},
		{"203.0.113.5:1234", "1.2.3.4", "203.0.113.5"}, // untrusted peer: header ignored
		{"10.1.2.3:1234", "1.2.3.4", "1.2.3.4"},
		{"10.1.2.3:1234", "6.6.6.6, 1.2.3.4, 192.168.1.1", "1.2.3.4"}, // spoofed left part skipped
		{"10.1.2.3:1234", "", "10.1.2.3"},
		{"10.1.2.3:1234", "garbage", "10.1.2.3"},
	}
	for _, tc := range tests {
		r, _ := http.NewRequest("POST", "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := a.clientIP(r); got != tc.want {
			t.Errorf("%s %q: %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
	for _, tc := range []struct {
		remote, proto string
		want          bool
	}{
		{"10.1.2.3:1", "https", true},
		{"10.1.2.3:1", "http", false},
		{"203.0.113.5:1", "https", false}, // not a trusted proxy
	} {
		r, _ := http.NewRequest("POST", "/", nil)
		r.RemoteAddr = tc.remote
		r.Header.Set("X-Forwarded-Proto", tc.proto)
		if got := a.overTLS(r); got != tc.want {
			t.Errorf("overTLS %s %s: %v", tc.remote, tc.proto, got)
		}
	}
	if _, err := NewAPI(APIOptions{Registry: &devices.Registry{}, TrustedProxies: []string{"nonsense"}}); err == nil {
		t.Fatal("bad proxy accepted")
	}
}

func TestLoginWithImpossibleNamesIsBounded(t *testing.T) {
	e := newAPIEnv(t)
	for _, name := range []string{strings.Repeat("n", 10_000), "a/b", "x'--"} {
		res, body := e.do("POST", "/auth/login", "", map[string]string{"username": name, "password": "whatever-pw"})
		e.mustStatus(res, body, http.StatusUnauthorized)
	}
	if n := e.api.logins.Size(); n != 2 { // the address and the shared "impossible name" pair
		t.Fatalf("limiter holds %d keys", n)
	}
}

func TestLoginCookieSecureOverTLS(t *testing.T) {
	e := newAPIEnv(t)
	srv := httptest.NewTLSServer(NewHandler(Options{API: e.api}))
	defer srv.Close()
	body := strings.NewReader(`{"username":"admin","password":"` + adminPassword + `"}`)
	res, err := srv.Client().Post(srv.URL+APIPrefix+"/auth/login", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || len(res.Cookies()) != 1 || !res.Cookies()[0].Secure {
		t.Fatalf("login over TLS: %d %v", res.StatusCode, res.Cookies())
	}
}

// TestLoginConcurrentGuesses: a burst of concurrent logins guessing one
// user's password from one address has only the pair's free failures
// checked, as one guess after the other would; the others get 429. The
// limiter let through every login that came before any had failed (100
// concurrent guesses at admin's password were all checked).
func TestLoginConcurrentGuesses(t *testing.T) {
	e := newAPIEnv(t)
	e.reg.SetPasswordCost(bcrypt.MinCost + 4) // checks long enough for the burst to overlap them
	if _, err := e.reg.CreateUser(context.Background(), "victim", "victim-password", "viewer"); err != nil {
		t.Fatal(err)
	}
	const n = 40
	start := make(chan struct{})
	codes := make(chan int, n)
	for i := range n {
		go func() {
			<-start
			body := fmt.Sprintf(`{"username":"victim","password":"wrong-%d"}`, i)
			res, err := e.srv.Client().Post(e.srv.URL+APIPrefix+"/auth/login", "application/json", strings.NewReader(body))
			if err != nil {
				codes <- 0
				return
			}
			res.Body.Close()
			codes <- res.StatusCode
		}()
	}
	close(start)
	got := map[int]int{}
	for range n {
		got[<-codes]++
	}
	free := e.api.logins.Options().PairFree
	if got[http.StatusUnauthorized] != free || got[http.StatusTooManyRequests] != n-free {
		t.Fatalf("statuses %v, want %d × 401 (checked) and %d × 429", got, free, n-free)
	}
	if checked := e.counter("tether_api_logins_total", "failed"); checked != float64(free) {
		t.Fatalf("%v passwords checked, want %d", checked, free)
	}
}
