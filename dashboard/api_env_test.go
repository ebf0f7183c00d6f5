package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices"
)

// logBuffer collects log output safely from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Passwords of the test users; each user's name is its role.
const (
	adminPassword    = "admin-password-1"
	operatorPassword = "operator-password-2"
	viewerPassword   = "viewer-password-3"
)

// apiEnv is a real API over a real SQLite file behind a real HTTP server.
type apiEnv struct {
	t       testing.TB
	srv     *httptest.Server
	reg     *devices.Registry
	api     *API
	logs    *logBuffer
	metrics *prometheus.Registry
	// tokens holds a session token per role ("admin", "operator", "viewer").
	tokens map[string]string
	// clock is the API's clock; advance it with e.advance.
	mu    sync.Mutex
	clock time.Time
}

// newAPIEnv starts an API with users admin, operator and viewer, each
// holding an API token in e.tokens.
func newAPIEnv(t testing.TB, opts ...func(*APIOptions)) *apiEnv {
	t.Helper()
	return withUsers(t, newBareAPIEnv(t, opts...))
}

// withUsers adds the users admin, operator and viewer to e, each holding
// an API token in e.tokens.
func withUsers(t testing.TB, e *apiEnv) *apiEnv {
	t.Helper()
	ctx := context.Background()
	for role, pw := range map[string]string{"admin": adminPassword, "operator": operatorPassword, "viewer": viewerPassword} {
		if _, err := e.reg.CreateUser(ctx, role, pw, role); err != nil {
			t.Fatal(err)
		}
		tok, _, err := e.reg.CreateToken(ctx, role, "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[role] = tok
	}
	return e
}

// newBareAPIEnv starts an API over an empty registry.
func newBareAPIEnv(t testing.TB, opts ...func(*APIOptions)) *apiEnv {
	t.Helper()
	logs := &logBuffer{}
	log := debugLogger(logs)
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	reg, err := devices.OpenRegistry(context.Background(), db, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return newAPIEnvOn(t, reg, logs, opts...)
}

// debugLogger logs everything as text to logs.
func debugLogger(logs *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newAPIEnvOn starts an API over reg (which the caller closes), logging
// to logs.
func newAPIEnvOn(t testing.TB, reg *devices.Registry, logs *logBuffer, opts ...func(*APIOptions)) *apiEnv {
	t.Helper()
	e := &apiEnv{t: t, logs: logs, reg: reg, tokens: map[string]string{}, clock: time.Now()}
	log := debugLogger(logs)
	var err error
	e.metrics = prometheus.NewRegistry()
	o := APIOptions{Registry: e.reg, Logger: log, Metrics: e.metrics, Now: e.now}
	for _, f := range opts {
		f(&o)
	}
	e.api, err = NewAPI(o)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(NewHandler(Options{API: e.api, Logger: log}))
	t.Cleanup(e.srv.Close)
	return e
}

// use makes the helpers report to t (a subtest) until restore is called:
// defer e.use(t)().
func (e *apiEnv) use(t testing.TB) (restore func()) {
	old := e.t
	e.t = t
	return func() { e.t = old }
}

func (e *apiEnv) now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.clock
}

func (e *apiEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.clock = e.clock.Add(d)
	e.mu.Unlock()
}

// login logs in and returns the session token.
func (e *apiEnv) login(user, password string) string {
	e.t.Helper()
	res, body := e.do("POST", "/auth/login", "", map[string]string{"username": user, "password": password})
	if res.StatusCode != http.StatusOK {
		e.t.Fatalf("login %s: %d %s", user, res.StatusCode, body)
	}
	var lr loginResponse
	if err := json.Unmarshal(body, &lr); err != nil || lr.Token == "" {
		e.t.Fatalf("login %s: %v %s", user, err, body)
	}
	return lr.Token
}

// do sends a request to path (relative to /api/v1) with a bearer token
// (none when empty) and a body: a string or []byte is sent as is, any
// other non-nil value as JSON. Extra header pairs follow.
func (e *apiEnv) do(method, path, token string, body any, header ...string) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+APIPrefix+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return res, b
}

// mustStatus fails unless res has status want; for errors it also checks
// the error body's shape.
func (e *apiEnv) mustStatus(res *http.Response, body []byte, want int) {
	e.t.Helper()
	if res.StatusCode != want {
		e.t.Fatalf("%s %s: status %d, want %d; body %s", res.Request.Method, res.Request.URL.Path, res.StatusCode, want, body)
	}
	if want >= 400 {
		checkErrorBody(e.t, res, body)
	}
}

// checkErrorBody checks that body is {"error":{"code","message"}}.
func checkErrorBody(t testing.TB, res *http.Response, body []byte) errorBody {
	t.Helper()
	var eb errorBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
		t.Fatalf("%s %s: %d: not an error body: %s (%v)", res.Request.Method, res.Request.URL.Path, res.StatusCode, body, err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q", ct)
	}
	return eb
}

// decode unmarshals body into a new T.
func decode[T any](t testing.TB, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %T: %v: %s", v, err, body)
	}
	return v
}

// snapshot is everything stored that bad input must not change: every
// device and every user, as the API lists them.
func (e *apiEnv) snapshot() string {
	e.t.Helper()
	var out []string
	cursor := ""
	for {
		res, body := e.do("GET", "/devices?limit=1000&cursor="+cursor, e.tokens["admin"], nil)
		e.mustStatus(res, body, 200)
		out = append(out, string(body))
		l := decode[deviceList](e.t, body)
		if cursor = l.NextCursor; cursor == "" {
			break
		}
	}
	res, body := e.do("GET", "/users?limit=1000", e.tokens["admin"], nil)
	e.mustStatus(res, body, 200)
	out = append(out, string(body))
	return strings.Join(out, "\n")
}

// createDevice registers a device and returns it with its secret.
func (e *apiEnv) createDevice(nd devices.NewDevice) devices.DeviceSecret {
	e.t.Helper()
	res, body := e.do("POST", "/devices", e.tokens["admin"], nd)
	e.mustStatus(res, body, http.StatusCreated)
	return decode[devices.DeviceSecret](e.t, body)
}

// counter returns the value of the counter name whose only label has
// value label, from the registry the API registered with.
func (e *apiEnv) counter(name, label string) float64 {
	e.t.Helper()
	fams, err := e.metrics.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	e.t.Fatalf("no %s{%s}", name, label)
	return 0
}
