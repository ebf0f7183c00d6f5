package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// FuzzAPI sends requests of every route of the API, through the real
// handler (NewHandler over a real SQLite registry, telemetry, commands,
// twins, a broker with the real access hook and session store and a
// device that answers commands, bans and the login throttle), with a query
// string, headers and a body from the fuzzer, as one of the seed
// identities. For every input: no panic, no 5xx, a 4xx is a JSON error
// body, a refused request changes no stored data (nor the bans and MQTT
// sessions), a lesser role changes nothing that needs a greater one, and
// no seed secret (device secret, password, API token, session) shows in
// an answer or in the log (the API's, the stores' and the broker's)
// unless the request itself carried it in its URL or body.
//
// route picks a route of the table (modulo its length, plus one: the
// last picks "raw", where arg is "METHOD /path" under /api/v1: the seeds
// in testdata/fuzz/FuzzAPI, named after the route they were written for,
// shift to other routes when one is added before it); arg fills
// each {wildcard} of the route's path. who picks the identity: none,
// viewer, operator or admin by API token, viewer or admin by session
// cookie (with the CSRF header). header holds extra "Name: value" lines.
// In arg, query, header and body, {admin-token}, {admin-password},
// {admin-session} (and the same for operator and viewer), and
// {dev-1-secret} stand for the seed secrets.
func FuzzAPI(f *testing.F) {
	fz := newFuzzAPI(f)
	defer fz.close()
	f.Fuzz(func(t *testing.T, route uint8, arg, rawQuery string, who uint8, header string, body []byte) {
		fz.check(t, route, arg, rawQuery, who, header, body)
	})
}

// fuzzAPI is FuzzAPI's environment, built once per fuzz process and
// rebuilt only when an accepted request has removed a seed identity (an
// admin deleting the viewer, changing a password, revoking a token).
type fuzzAPI struct {
	env   *fuzzEnv
	dir   string
	built int
}

// fuzzEnv is one environment and the secrets of its seed data.
type fuzzEnv struct {
	*dataEnv
	tb       *envTB
	sessions map[string]string
	secrets  map[string]string // placeholder name → secret
	seedDevs []string
}

// envTB is a testing.TB whose Cleanup and TempDir belong to one fuzz
// environment, so the harness can close it and build another without
// waiting for the end of the fuzz target.
type envTB struct {
	testing.TB
	dir      string
	n        int
	cleanups []func()
}

func (e *envTB) Cleanup(f func()) { e.cleanups = append(e.cleanups, f) }

func (e *envTB) TempDir() string {
	e.n++
	d := filepath.Join(e.dir, fmt.Sprint(e.n))
	if err := os.MkdirAll(d, 0o700); err != nil {
		e.Fatal(err)
	}
	return d
}

func (e *envTB) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
	_ = os.RemoveAll(e.dir)
}

func newFuzzAPI(f testing.TB) *fuzzAPI {
	fz := &fuzzAPI{dir: f.TempDir()}
	fz.build(f)
	return fz
}

func (fz *fuzzAPI) close() {
	if fz.env != nil {
		fz.env.tb.close()
		fz.env = nil
	}
}

// build makes a new environment: users admin, operator and viewer, each
// with an API token and a session, device dev-1 (connected, answering
// commands, with telemetry, a twin and a command), and dev-2 (labels and
// topic grants, offline).
// t reports failures of the build: the fuzz target's *testing.F, or the
// *testing.T of the input whose request called for a new build.
func (fz *fuzzAPI) build(t testing.TB) {
	fz.close()
	fz.built++
	tb := &envTB{TB: t, dir: filepath.Join(fz.dir, fmt.Sprint(fz.built))}
	e := newDataEnv(tb, withAccess)
	fe := &fuzzEnv{dataEnv: e, tb: tb, sessions: map[string]string{}, secrets: map[string]string{}}
	fz.env = fe
	for role, pw := range map[string]string{"admin": adminPassword, "operator": operatorPassword, "viewer": viewerPassword} {
		fe.sessions[role] = e.login(role, pw)
		fe.secrets[role+"-token"] = e.tokens[role]
		fe.secrets[role+"-password"] = pw
		fe.secrets[role+"-session"] = fe.sessions[role]
	}
	d1 := e.createDevice(devices.NewDevice{ID: "dev-1", Name: "Pump 1", Type: "pump", Labels: map[string]string{"site": "north"}})
	d2 := e.createDevice(devices.NewDevice{ID: "dev-2", Type: "tasmota",
		Topics: []devices.TopicGrant{{Filter: "tele/%c/#", Access: "publish"}}})
	fe.secrets["dev-1-secret"], fe.secrets["dev-2-secret"] = d1.Secret, d2.Secret
	fe.seedDevs = []string{"dev-1", "dev-2"}
	e.deviceWith(tb, "dev-1", d1.Secret, "ok")
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Minute)
	for i := range 120 {
		s, err := devices.ParseTelemetry(fmt.Appendf(nil, `{"temp":%d.5,"on":%t,"mode":"m%d"}`, 20+i%7, i%2 == 0, i%3))
		if err != nil {
			t.Fatal(err)
		}
		s.TS = base.Add(time.Duration(i) * time.Minute)
		e.tel.Add("dev-1", s, s.TS)
	}
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, b := e.do("PATCH", "/devices/dev-1/twin", e.tokens["operator"], `{"desired":{"rate":5}}`)
	e.mustStatus(res, b, 200)
	res, b = e.do("POST", "/devices/dev-2/commands", e.tokens["operator"], `{"name":"reboot"}`)
	e.mustStatus(res, b, 202)
	// An offline MQTT session (GET and DELETE /sessions) and a ban of an
	// address (GET /security, DELETE /security/bans/ip:192.0.2.7).
	keeper := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqttAddr).SetClientID("keeper").
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	testmqtt.WaitToken(tb, "keeper connect", keeper.Connect())
	testmqtt.WaitToken(tb, "keeper subscribe", keeper.Subscribe("plant/#", 1, nil))
	keeper.Disconnect(0)
	testmqtt.CheckFor(tb, 10*time.Second, func() error {
		for _, s := range e.store.Sessions() {
			if s.ClientID == "keeper" && !s.Online {
				return nil
			}
		}
		return fmt.Errorf("keeper's session not offline in the store: %+v", e.store.Sessions())
	})
	for range e.bans.Options().Threshold {
		e.bans.Refused(devices.Refusal{Kind: "login", Address: "192.0.2.7", Identity: "root", Detail: "wrong credentials"})
	}
	if !e.bans.AddressBanned("192.0.2.7") {
		t.Fatal("the seed ban is not in force")
	}
}

// intact reports whether the seed identities and devices still work.
func (fe *fuzzEnv) intact() bool {
	ctx := context.Background()
	for role, tok := range fe.tokens {
		if id, err := fe.reg.AuthenticateToken(ctx, tok); err != nil || id.Role != role {
			return false
		}
		if id, err := fe.reg.VerifySession(fe.sessions[role]); err != nil || id.Role != role {
			return false
		}
	}
	for _, id := range fe.seedDevs {
		if d, err := fe.reg.Device(ctx, id); err != nil || !d.Enabled {
			return false
		}
	}
	// dev-1 still connected (DELETE /sessions/dev-1 ends its connection),
	// keeper's session and the seed ban still there.
	if cl, ok := fe.b.Server.Clients.Get("dev-1"); !ok || cl.Closed() {
		return false
	}
	return strings.Contains(fe.live(), "session keeper\n") && fe.bans.AddressBanned("192.0.2.7")
}

// live is what the admin alone may change that lives outside the
// database: the bans in force and the MQTT sessions.
func (fe *fuzzEnv) live() string {
	var b strings.Builder
	for _, ban := range fe.bans.Active() {
		fmt.Fprintf(&b, "ban %s\n", ban.Key)
	}
	ids := []string{}
	for _, s := range fe.store.Sessions() {
		ids = append(ids, s.ClientID)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "session %s\n", id)
	}
	return b.String()
}

// Parts of the stored data, by the least role that may change them.
var (
	// adminData: devices, users and their roles, and the admin's tokens.
	adminData = []string{
		`SELECT id, name, type, labels, enabled, hex(secret_hash), topics, updated_at FROM devices ORDER BY id`,
		`SELECT username, role FROM users ORDER BY username`,
		`SELECT id, hex(digest), name, COALESCE(expires_at, '') FROM api_tokens WHERE username = 'admin' ORDER BY id`,
	}
	// operatorData: commands and desired twin states (not what devices
	// change by themselves: command status, reported state).
	operatorData = []string{
		`SELECT id, device_id, name, params FROM commands ORDER BY id`,
		`SELECT device_id, desired, desired_version FROM twins ORDER BY device_id`,
	}
	// anyData: what anyone may change of their own: passwords, tokens,
	// sessions.
	anyData = []string{
		`SELECT username, password_hash FROM users ORDER BY username`,
		`SELECT id, hex(digest), name, username, COALESCE(expires_at, '') FROM api_tokens ORDER BY id`,
		`SELECT jti FROM revoked_sessions ORDER BY jti`,
	}
)

// dataParts are the stored data by the least role that may change them
// (adminData, operatorData, anyData).
var dataParts = [][]string{adminData, operatorData, anyData}

// part is a hash of the data part i: the rows its queries select, and
// for adminData the bans and sessions (live).
func (fe *fuzzEnv) part(t testing.TB, i int) string {
	h := sha256.New()
	if i == 0 {
		h.Write([]byte(fe.live()))
	}
	h.Write([]byte(fe.digest(t, dataParts[i])))
	return hex.EncodeToString(h.Sum(nil))
}

// digest is a hash of the rows the queries select.
func (fe *fuzzEnv) digest(t testing.TB, queries []string) string {
	h := sha256.New()
	for _, q := range queries {
		rows, err := fe.db.R.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(h, "%q\n", vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		h.Write([]byte("--\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fuzzTimeout bounds one request: a command sent with "wait" to a device
// that does not answer would otherwise hold it for its timeout.
const fuzzTimeout = 2 * time.Second

func (fz *fuzzAPI) check(t *testing.T, route uint8, arg, rawQuery string, who uint8, header string, body []byte) {
	fe := fz.env
	defer fe.use(t)()
	secrets := fe.secrets
	sub := func(s string) string {
		if !strings.Contains(s, "{") {
			return s
		}
		for k, v := range secrets {
			s = strings.ReplaceAll(s, "{"+k+"}", v)
		}
		return s
	}
	arg, rawQuery, header = sub(arg), sub(rawQuery), sub(header)
	body = []byte(sub(string(body)))

	table := fe.api.table
	var method, path string
	role := "raw" // of the route picked: the raw one's is not known
	if i := int(route) % (len(table) + 1); i < len(table) {
		rt := table[i]
		method, role = rt.Method, rt.Role
		// Each {wildcard} of the pattern becomes arg.
		for rest := rt.Path; ; {
			a, b, ok := strings.Cut(rest, "{")
			path += a
			if !ok {
				break
			}
			path += arg
			_, rest, _ = strings.Cut(b, "}")
		}
	} else {
		var ok bool
		if method, path, ok = strings.Cut(arg, " "); !ok {
			return
		}
		// Under /api/v1/: "/api/v10" is not the API's.
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
	}
	target := APIPrefix + path
	if rawQuery != "" {
		target += "?" + rawQuery
	}

	var head strings.Builder
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: tether.test\r\n", method, target)
	if len(body) > 0 {
		head.WriteString("Content-Type: application/json\r\n")
	}
	var carried []string // credentials sent in headers: never to be excused
	switch who % 6 {
	case 1, 2, 3:
		role := []string{"viewer", "operator", "admin"}[who%6-1]
		fmt.Fprintf(&head, "Authorization: Bearer %s\r\n", fe.tokens[role])
		carried = append(carried, fe.tokens[role])
	case 4, 5:
		role := []string{"viewer", "admin"}[who%6-4]
		fmt.Fprintf(&head, "Cookie: %s=%s\r\nX-Requested-With: tether\r\n", SessionCookie, fe.sessions[role])
		carried = append(carried, fe.sessions[role])
	}
	for _, line := range strings.Split(header, "\n") {
		if line = strings.TrimRight(line, "\r"); line != "" {
			head.WriteString(line + "\r\n")
		}
	}
	head.WriteString("\r\n")
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head.String())))
	if err != nil {
		return // the server answers 400 itself
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	// The login throttle counts failures by address: an address of its
	// own for each input keeps earlier failed logins from answering every
	// later login with 429.
	h := fnv.New32a()
	h.Write([]byte(arg))
	h.Write(body)
	req.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:40000", h.Sum32()>>16&0xff, h.Sum32()>>8&0xff, h.Sum32()&0xff)
	ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
	defer cancel()
	req = req.WithContext(ctx)

	// The most the request may do: the role of who, or of any seed
	// credential the input names.
	level := map[uint8]string{1: viewer, 2: operator, 3: admin, 4: viewer, 5: admin}[who%6]
	all := head.String() + string(body)
	for _, role := range []string{viewer, operator, admin} {
		for _, k := range []string{"-token", "-password", "-session"} {
			if strings.Contains(all, secrets[role+k]) && (level == "" || (devices.Identity{Kind: devices.KindUser, Role: role}).Can(level)) {
				level = role
			}
		}
	}
	var before [3]string
	for i := range dataParts {
		before[i] = fe.part(t, i)
	}
	logAt := len(fe.logs.String())
	rec := httptest.NewRecorder()
	fe.srv.Config.Handler.ServeHTTP(rec, req)
	res := rec.Result()
	res.Request = req
	out := rec.Body.Bytes()
	logs := fe.logs.String()[logAt:]
	what := fmt.Sprintf("%s %s (who %d, headers %q, body %q)", method, target, who%6, header, body)
	t.Logf("%s: %d %.200s", what, res.StatusCode, out)

	// Secrets: none of the seed's in the answer or the log, unless the
	// request carried it in its URL or body (which may be stored and
	// shown back, as a device's name say).
	var answer strings.Builder
	answer.Write(out)
	for k, vs := range res.Header {
		fmt.Fprintf(&answer, "%s: %s\n", k, strings.Join(vs, ","))
	}
	for name, s := range secrets {
		if strings.Contains(target, s) || bytes.Contains(body, []byte(s)) {
			continue
		}
		if strings.Contains(answer.String(), s) {
			t.Fatalf("%s: the answer (%d) shows %s: %s", what, res.StatusCode, name, out)
		}
		if strings.Contains(logs, s) {
			t.Fatalf("%s: the log shows %s", what, name)
		}
	}
	for _, s := range carried {
		if strings.Contains(logs, s) {
			t.Fatalf("%s: the log shows the request's credentials", what)
		}
	}

	if ctx.Err() != nil {
		// A command waited for past the request's deadline: the client
		// is gone, what it was answered does not matter.
		return
	}
	status := res.StatusCode
	if status >= 500 {
		eb := checkErrorBody(t, res, out)
		if !(status == http.StatusServiceUnavailable && eb.Error.Code == codeUnavailable) {
			t.Fatalf("%s: server error %d: %s\nlog:\n%s", what, status, out, logs)
		}
	}
	if status < 300 && level == "" && role != public && role != "raw" && strings.Count(path, "/") == strings.Count(table[int(route)%(len(table)+1)].Path, "/") {
		t.Fatalf("%s: answered %d (%s) with no credentials", what, status, out)
	}
	if status >= 400 {
		if method != http.MethodHead {
			checkErrorBody(t, res, out)
		}
		for i := range dataParts {
			if fe.part(t, i) != before[i] {
				t.Fatalf("%s: refused with %d (%s), yet the stored data changed", what, status, out)
			}
		}
	}
	// What a lesser identity may not change, it does not, answered
	// whatever it was.
	for i, need := range []string{admin, operator} {
		if !(devices.Identity{Kind: devices.KindUser, Role: level}).Can(need) {
			if fe.part(t, i) != before[i] {
				t.Fatalf("%s: answered %d (%s): a request of role %q changed what needs %s", what, status, out, level, need)
			}
		}
	}
	if status < 300 && method != http.MethodHead && res.Header.Get("Content-Type") == "application/json" &&
		len(out) > 0 && !json.Valid(out) {
		t.Fatalf("%s: %d with JSON that does not parse: %s", what, status, out)
	}
	if status < 300 && !safeMethod(method) && !fe.intact() {
		fz.build(t)
	}
}

// TestFuzzAPIWatchesWhatItGuards: FuzzAPI's digests see what each role
// may change, each in the store the API really serves (they once read
// a database the API did not use, and passed a viewer deleting a
// device): devices, bans and sessions for the admin, commands for the
// operator, tokens for anyone.
func TestFuzzAPIWatchesWhatItGuards(t *testing.T) {
	fz := newFuzzAPI(t)
	defer fz.close()
	fe := fz.env
	defer fe.use(t)()
	for _, c := range []struct {
		part               int
		role, method, path string
		body               any
		want               int
	}{
		{0, admin, "DELETE", "/devices/dev-2", nil, 204},
		{0, admin, "DELETE", "/security/bans/ip:192.0.2.7", nil, 204},
		{0, admin, "DELETE", "/sessions/keeper", nil, 204},
		{1, operator, "POST", "/devices/dev-1/commands", `{"name":"ping"}`, 202},
		{2, viewer, "POST", "/tokens", `{"name":"mine"}`, 201},
	} {
		before := fe.part(t, c.part)
		res, b := fe.do(c.method, c.path, fe.tokens[c.role], c.body)
		fe.mustStatus(res, b, c.want)
		if fe.part(t, c.part) == before {
			t.Errorf("%s %s by %s: %d, and the digest of part %d did not change", c.method, c.path, c.role, c.want, c.part)
		}
	}
}
