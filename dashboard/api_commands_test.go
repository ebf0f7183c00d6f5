package dashboard

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// dataEnv is an API env with telemetry, commands and twins wired to a
// broker (anonymous access) that test devices connect to over TCP.
type dataEnv struct {
	*apiEnv
	mqttAddr string
	tel      *devices.Telemetry
	db       *devices.DB
	b        *broker.Broker
	// With withAccess: the broker's access hook, session store and bans,
	// and the login throttle that feeds them, wired as cmd/tether wires
	// them.
	auth  *broker.Auth
	store *sessions.Store
	bans  *devices.Bans
}

// dataEnvOptions are newDataEnv's options.
type dataEnvOptions struct {
	access bool
	// valuesRate and valuesBurst are the telemetry's
	// DeviceValuesRate and DeviceValuesBurst (0: no bound).
	valuesRate, valuesBurst int
	// maxCommands is the commands' MaxPerDevice (0: no bound).
	maxCommands int
}

// withAccess gives the broker the real access hook (anonymous clients
// allowed) and session store, and the API the session routes, the bans
// and the login throttle that counts towards them.
func withAccess(o *dataEnvOptions) { o.access = true }

func newDataEnv(t testing.TB, opts ...func(*dataEnvOptions)) *dataEnv {
	t.Helper()
	var do dataEnvOptions
	for _, f := range opts {
		f(&do)
	}
	ctx := context.Background()
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// One log for the API and the stores and broker under it.
	logs := &logBuffer{}
	log := debugLogger(logs)
	// The registry is opened first, as in cmd/tether startApp: the stores
	// hand it last values and it tells them of the devices it deletes.
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{FlushInterval: 20 * time.Millisecond, Logger: log, LastValues: reg,
		DeviceValuesRate: do.valuesRate, DeviceValuesBurst: do.valuesBurst})
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := devices.OpenCommands(ctx, db, &devices.CommandsOptions{SweepInterval: 50 * time.Millisecond, MaxPerDevice: do.maxCommands, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	twins, err := devices.OpenTwins(ctx, db, &devices.TwinsOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	reg.Attach(tel, cmds, twins)
	audit, err := devices.OpenAudit(ctx, db, &devices.AuditOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ch, th := broker.NewCommandHook(cmds, log), broker.NewTwinHook(twins, log)
	o := broker.DefaultOptions()
	o.TCPAddr, o.AllowAnonymous = "127.0.0.1:0", true
	o.Logger, o.Hooks = log, []mqtt.Hook{broker.NewTelemetryHook(tel, log), ch, th}
	d := &dataEnv{tel: tel, db: db}
	var logins *devices.LoginLimiter
	if do.access {
		if d.store, err = sessions.Open(t.TempDir(), &sessions.Options{Logger: log}); err != nil {
			t.Fatal(err)
		}
		logins = devices.NewLoginLimiter(nil)
		d.bans = devices.NewBans(&devices.BanOptions{Audit: audit})
		logins.OnFailure(d.bans.LoginFailed)
		d.auth = broker.NewAuth(broker.AuthOptions{Registry: reg, AllowAnonymous: true, Logger: log,
			Logins: logins, Bans: d.bans, Sessions: d.store})
		o.Access = d.auth
		o.Hooks = append(o.Hooks, d.store) // the last hook, as in cmd/tether
	}
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	d.b = b
	ch.Attach(b.Server)
	th.Attach(b.Server)
	if d.store != nil {
		b.Limits.SetBanned(d.bans.AddressBanned)
		d.store.Attach(b.Server)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		if d.store != nil {
			d.store.Close()
		}
		tel.Close()
		cmds.Close()
		twins.Close()
		audit.Close()
		reg.Close()
		db.Close()
	})
	// The API serves the same registry (devices, users, tokens) as the
	// broker and the stores use.
	d.apiEnv = withUsers(t, newAPIEnvOn(t, reg, logs, func(o *APIOptions) {
		o.Telemetry, o.Commands, o.Twins, o.Broker, o.Audit = tel, ch, th, b, audit
		if d.store != nil {
			o.Sessions, o.SessionDeleter, o.Bans, o.Logins = d.store, authDeleter{d.auth}, d.bans, logins
		}
	}))
	d.mqttAddr = b.TCP.Address()
	return d
}

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// device connects an MQTT 3.1.1 device that answers commands with answer
// ("ok", "error", or "" for silence).
func (e *dataEnv) device(t testing.TB, id, answer string) paho3.Client {
	t.Helper()
	return e.deviceWith(t, id, "", answer)
}

// deviceWith is device, logging in with the device's secret (with
// withAccess, a device's id is its own: anonymous clients may not take
// it).
func (e *dataEnv) deviceWith(t testing.TB, id, secret, answer string) paho3.Client {
	t.Helper()
	var c paho3.Client
	o := paho3.NewClientOptions().AddBroker("tcp://" + e.mqttAddr).SetClientID(id).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(false)
	if secret != "" {
		o.SetUsername(id).SetPassword(secret)
	}
	c = paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("devices/"+id+"/commands/#", 1, func(_ paho3.Client, m paho3.Message) {
		if answer == "" {
			return
		}
		var cmd struct{ ID string }
		_ = json.Unmarshal(m.Payload(), &cmd)
		r := `{"status":"ok","result":{"pong":true}}`
		if answer == "error" {
			r = `{"status":"error","error":"nope"}`
		}
		go c.Publish("devices/"+id+"/responses/"+cmd.ID, 1, false, r)
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return c
}

func TestCommandRoutes(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-ok"})
	e.createDevice(devices.NewDevice{ID: "dev-err"})
	e.createDevice(devices.NewDevice{ID: "dev-mute"})
	e.device(t, "dev-ok", "ok")
	e.device(t, "dev-err", "error")
	e.device(t, "dev-mute", "")
	op, view := e.tokens["operator"], e.tokens["viewer"]
	for _, tc := range []struct {
		name, device, token string
		body                any
		status              int
		want                string
	}{
		{"wait succeeded", "dev-ok", op, map[string]any{"name": "ping", "params": map[string]any{"a": 1}, "wait": true, "timeout": 5}, 200, devices.StatusSucceeded},
		{"wait failed", "dev-err", op, map[string]any{"name": "ping", "wait": true, "timeout": 5}, 200, devices.StatusFailed},
		{"wait expired", "dev-mute", op, map[string]any{"name": "ping", "wait": true, "timeout": 1}, 200, devices.StatusExpired},
		{"no wait", "dev-mute", op, map[string]any{"name": "ping"}, 202, devices.StatusPending},
		{"viewer refused", "dev-ok", view, map[string]any{"name": "ping"}, 403, ""},
		{"unknown device", "ghost", op, map[string]any{"name": "ping"}, 404, ""},
		{"bad name", "dev-ok", op, map[string]any{"name": "a/b"}, 400, ""},
		{"params not object", "dev-ok", op, map[string]any{"name": "x", "params": []int{1}}, 400, ""},
		{"timeout too long", "dev-ok", op, map[string]any{"name": "x", "timeout": 1e9}, 400, ""},
		{"unknown field", "dev-ok", op, map[string]any{"name": "x", "colour": "red"}, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do("POST", "/devices/"+tc.device+"/commands", tc.token, tc.body)
			e.mustStatus(res, body, tc.status)
			if tc.want == "" {
				return
			}
			cmd := decode[devices.Command](t, body)
			if cmd.Status != tc.want || cmd.DeviceID != tc.device || cmd.ID == "" {
				t.Fatalf("command %s", body)
			}
			res, body = e.do("GET", "/commands/"+cmd.ID, view, nil)
			e.mustStatus(res, body, 200)
			if got := decode[devices.Command](t, body); got.ID != cmd.ID {
				t.Fatalf("get %s", body)
			}
		})
	}
	res, body := e.do("GET", "/devices/dev-mute/commands?limit=1", view, nil)
	e.mustStatus(res, body, 200)
	l := decode[struct {
		Commands   []devices.Command `json:"commands"`
		NextCursor string            `json:"next_cursor"`
	}](t, body)
	if len(l.Commands) != 1 || l.NextCursor == "" {
		t.Fatalf("history %s", body)
	}
	res, body = e.do("GET", "/devices/dev-mute/commands?cursor="+l.NextCursor, view, nil)
	e.mustStatus(res, body, 200)
	if !strings.Contains(string(body), `"expired"`) {
		t.Fatalf("second page %s", body)
	}
	res, body = e.do("GET", "/commands/cmd-none", view, nil)
	e.mustStatus(res, body, 404)
}

func TestTwinRoutes(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	op, view := e.tokens["operator"], e.tokens["viewer"]
	res, body := e.do("PATCH", "/devices/dev-1/twin", view, map[string]any{"desired": map[string]any{"rate": 5}})
	e.mustStatus(res, body, 403)
	for _, bad := range []any{`{"desired":[1]}`, `{"desired":{"version":2}}`, `{}`, `{"reported":{}}`} {
		res, body = e.do("PATCH", "/devices/dev-1/twin", op, bad)
		e.mustStatus(res, body, 400)
	}
	res, body = e.do("PATCH", "/devices/dev-1/twin", op, map[string]any{"desired": map[string]any{"rate": 5, "mode": "eco"}})
	e.mustStatus(res, body, 200)
	tw := decode[devices.Twin](t, body)
	if tw.DesiredVersion != 1 || len(tw.Delta) != 2 {
		t.Fatalf("twin %s", body)
	}
	dev := e.device(t, "dev-1", "")
	got := make(chan []byte, 4)
	dev.Subscribe("devices/dev-1/twin/desired", 1, func(_ paho3.Client, m paho3.Message) { got <- m.Payload() })
	select {
	case p := <-got:
		if !strings.Contains(string(p), `"version":1`) {
			t.Fatalf("desired %s", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no retained desired state")
	}
	dev.Publish("devices/dev-1/twin/reported", 1, false, `{"rate":5,"mode":"eco"}`).Wait()
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		res, body = e.do("GET", "/devices/dev-1/twin", view, nil)
		e.mustStatus(res, body, 200)
		tw = decode[devices.Twin](t, body)
		if len(tw.Delta) == 0 && tw.ReportedVersion == 1 {
			return nil
		}
		return fmt.Errorf("delta never emptied: %s", body)
	})
	res, body = e.do("GET", "/devices/ghost/twin", view, nil)
	e.mustStatus(res, body, 404)
}

// TestTwinDepthRoute: a desired patch nested past devices.MaxTwinDepth
// (the black-box tester's was 1,001 levels, past SQLite's JSON limit) is
// a 400 that says why, and changes neither the stored twin nor the
// retained desired document; one at the limit is merged.
func TestTwinDepthRoute(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	op, view := e.tokens["operator"], e.tokens["viewer"]
	res, body := e.do("PATCH", "/devices/dev-1/twin", op, map[string]any{"desired": map[string]any{"rate": 5}})
	e.mustStatus(res, body, 200)
	nested := func(depth int) string {
		return `{"desired":` + strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth) + "}"
	}
	for _, depth := range []int{devices.MaxTwinDepth + 1, 1000, 1001} {
		res, body = e.do("PATCH", "/devices/dev-1/twin", op, nested(depth))
		e.mustStatus(res, body, 400)
		eb := decode[errorBody](t, body)
		if want := fmt.Sprintf("nested deeper than %d levels", devices.MaxTwinDepth); eb.Error.Code != codeInvalid || !strings.Contains(eb.Error.Message, want) {
			t.Fatalf("%d deep: %s, want code %q saying %q", depth, body, codeInvalid, want)
		}
	}
	res, body = e.do("GET", "/devices/dev-1/twin", view, nil)
	e.mustStatus(res, body, 200)
	if tw := decode[devices.Twin](t, body); tw.DesiredVersion != 1 || len(tw.Desired) != 1 || tw.Desired["rate"] != 5.0 {
		t.Fatalf("refused patches changed the twin: %s", body)
	}
	dev := e.device(t, "dev-1", "")
	got := make(chan []byte, 4)
	dev.Subscribe("devices/dev-1/twin/desired", 1, func(_ paho3.Client, m paho3.Message) { got <- m.Payload() })
	select {
	case p := <-got:
		if string(p) != `{"rate":5,"version":1}` {
			t.Fatalf("retained desired %s", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no retained desired state")
	}
	res, body = e.do("PATCH", "/devices/dev-1/twin", op, nested(devices.MaxTwinDepth))
	e.mustStatus(res, body, 200)
	if tw := decode[devices.Twin](t, body); tw.DesiredVersion != 2 || tw.Desired["a"] == nil {
		t.Fatalf("patch at the limit: %s", body)
	}
}

func TestTelemetryRoutes(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	view := e.tokens["viewer"]
	dev := e.device(t, "dev-1", "")
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 6 {
		p := `{"temp":` + []string{"1", "2", "3", "4", "5", "6"}[i] + `,"ts":"` + base.Add(time.Duration(i)*20*time.Second).Format(time.RFC3339) + `"}`
		dev.Publish("devices/dev-1/telemetry", 1, false, p).Wait()
	}
	from, to := base.Format(time.RFC3339), base.Add(time.Hour).Format(time.RFC3339)
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if s, _ := e.tel.Stats(); s != 6 {
			return fmt.Errorf("telemetry not stored: %d of 6 points", s)
		}
		return nil
	})
	res, body := e.do("GET", "/devices/dev-1/telemetry?from="+from+"&to="+to+"&limit=4", view, nil)
	e.mustStatus(res, body, 200)
	pts := decode[struct {
		Points []devices.Point `json:"points"`
	}](t, body)
	if len(pts.Points) != 4 || pts.Points[0].Values["temp"] != 1.0 {
		t.Fatalf("points %s", body)
	}
	res, body = e.do("GET", "/devices/dev-1/telemetry?from="+from+"&to="+to+"&step=1m", view, nil)
	e.mustStatus(res, body, 200)
	bs := decode[struct {
		Buckets []devices.Bucket `json:"buckets"`
	}](t, body)
	if len(bs.Buckets) != 2 || bs.Buckets[0].Max["temp"] != 3 || bs.Buckets[1].Avg["temp"] != 5 {
		t.Fatalf("buckets %s", body)
	}
	// CSV, by format= or by Accept, streamed as rows of ts, metric, value.
	wantCSV := "ts,metric,value\n2026-01-01T00:00:00.000Z,temp,1\n2026-01-01T00:00:20.000Z,temp,2\n"
	res, body = e.do("GET", "/devices/dev-1/telemetry?from="+from+"&to="+to+"&limit=2&format=csv", view, nil)
	e.mustStatus(res, body, 200)
	if ct := res.Header.Get("Content-Type"); ct != "text/csv; charset=utf-8" || string(body) != wantCSV {
		t.Fatalf("format=csv: %s %q", ct, body)
	}
	res, body = e.do("GET", "/devices/dev-1/telemetry?from="+from+"&to="+to+"&limit=2", view, nil, "Accept", "text/csv")
	e.mustStatus(res, body, 200)
	if string(body) != wantCSV {
		t.Fatalf("Accept: text/csv: %q", body)
	}
	res, body = e.do("GET", "/devices/dev-1/telemetry?from="+from+"&to="+to+"&step=1m&format=csv", view, nil)
	e.mustStatus(res, body, 200)
	if want := "ts,metric,min,avg,max,count\n2026-01-01T00:00:00.000Z,temp,1,2,3,3\n2026-01-01T00:01:00.000Z,temp,4,5,6,3\n"; string(body) != want {
		t.Fatalf("buckets as CSV: %q", body)
	}
	res, body = e.do("GET", "/devices/dev-1/telemetry?format=csv", "", nil)
	if res.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "temp") {
		t.Fatalf("CSV without a token: %d %s", res.StatusCode, body)
	}
	for _, q := range []string{"?from=yesterday", "?limit=0", "?step=fast", "?colour=red", "?format=xml", "?format=csv&limit=0", "?from=" + to + "&to=" + from, "?step=1ms&from=" + from + "&to=" + to} {
		res, body = e.do("GET", "/devices/dev-1/telemetry"+q, view, nil)
		e.mustStatus(res, body, 400)
	}
	res, body = e.do("GET", "/devices/ghost/telemetry", view, nil)
	e.mustStatus(res, body, 404)
	res, body = e.do("GET", "/devices/dev-1/telemetry", "", nil)
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", res.StatusCode)
	}
}

// TestTelemetryHugeNumbers: numbers near the largest float64, published
// by a real device through the broker's hook and the writer, give valid
// JSON and CSV with finite numbers for every step: 1.7e308 twice averages
// 1.7e308 per minute and per hour (the hourly rollups), and +1.7e308 and
// -1.7e308 together never make NaN.
func TestTelemetryHugeNumbers(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "evil"})
	e.createDevice(devices.NewDevice{ID: "mixed"})
	view := e.tokens["viewer"]
	evil, mixed := e.device(t, "evil", ""), e.device(t, "mixed", "")
	for range 2 {
		evil.Publish("devices/evil/telemetry", 1, false, `{"v":1.7e308}`).Wait()
	}
	for _, v := range []string{"1.7e308", "1.7e308", "-1.7e308", "-1.7e308", "-1.7e308", "1e308"} {
		mixed.Publish("devices/mixed/telemetry", 1, false, `{"v":`+v+`}`).Wait()
	}
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if s, _ := e.tel.Stats(); s != 8 {
			return fmt.Errorf("telemetry not stored: %d of 8 points", s)
		}
		return nil
	})
	now := time.Now()
	rng := "from=" + now.Add(-time.Hour).UTC().Format(time.RFC3339) + "&to=" + now.Add(time.Hour).UTC().Format(time.RFC3339)
	finite := func(what string, v float64) {
		t.Helper()
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("%s: %v", what, v)
		}
	}
	for _, tc := range []struct {
		device string
		count  int64
		avg    float64 // NaN: any, within min and max
	}{{"evil", 2, 1.7e308}, {"mixed", 6, math.NaN()}} {
		for _, step := range []string{"1m", "1h", "2h", "90s"} {
			q := "/devices/" + tc.device + "/telemetry?" + rng + "&step=" + step
			res, body := e.do("GET", q, view, nil)
			e.mustStatus(res, body, 200)
			bs := decode[struct {
				Buckets []devices.Bucket `json:"buckets"`
			}](t, body)
			var n int64
			for _, b := range bs.Buckets {
				lo, avg, hi := b.Min["v"], b.Avg["v"], b.Max["v"]
				if avg < lo || avg > hi || (!math.IsNaN(tc.avg) && avg != tc.avg) {
					t.Fatalf("%s: min %v avg %v max %v, want avg %v", q, lo, avg, hi, tc.avg)
				}
				n += b.Count["v"]
			}
			if n != tc.count {
				t.Fatalf("%s: %d numbers, want %d: %s", q, n, tc.count, body)
			}

			res, body = e.do("GET", q+"&format=csv", view, nil)
			e.mustStatus(res, body, 200)
			rows, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
			if err != nil || len(rows) < 2 || strings.Join(rows[0], ",") != "ts,metric,min,avg,max,count" {
				t.Fatalf("%s as CSV: %v %q", q, err, body)
			}
			n = 0
			for _, r := range rows[1:] {
				var f [3]float64
				for i := range f {
					if f[i], err = strconv.ParseFloat(r[2+i], 64); err != nil {
						t.Fatalf("%s as CSV: %q: %v", q, r, err)
					}
					finite(q+" as CSV", f[i])
				}
				if f[1] < f[0] || f[1] > f[2] || (!math.IsNaN(tc.avg) && f[1] != tc.avg) {
					t.Fatalf("%s as CSV: %q, want avg %v", q, r, tc.avg)
				}
				c, err := strconv.ParseInt(r[5], 10, 64)
				if err != nil {
					t.Fatalf("%s as CSV: %q: %v", q, r, err)
				}
				n += c
			}
			if n != tc.count {
				t.Fatalf("%s as CSV: %d numbers, want %d: %q", q, n, tc.count, body)
			}
		}
	}
}

// A device's string that a spreadsheet would run as a formula is not one
// in the CSV, also where a spreadsheet splitting rows at ';' or a tab
// would start a cell, or at a line break inside a quoted field (which a
// spreadsheet reading with ';' does not take for quoted: see csvText).
func TestCSVText(t *testing.T) {
	for in, want := range map[string]string{"=cmd()": "'=cmd()", "+1": "'+1", "@x": "'@x", "ok": "ok", "": "",
		"a;=1+1": "a;'=1+1", "x\t@SUM(A1)": "x\t'@SUM(A1)", ";-2;+3": ";'-2;'+3", "=a;b;@c": "'=a;b;'@c",
		"\t=x": "'\t'=x", "a;b": "a;b", "a=b;c+d": "a=b;c+d", "k;": "k;",
		"e\n=2+2": "e\n'=2+2", "g\r=4+4": "g\r'=4+4", "h\r\n-1": "h\r\n'-1", "\r@x": "'\r'@x", "l\nm": "l\nm"} {
		if got := csvText(in); got != want {
			t.Errorf("csvText(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzCSVText: whatever a device's string, no cell a spreadsheet could
// make of its CSV cell, splitting at ';', tab, CR or LF, starts a
// formula, and all it adds are quotes.
func FuzzCSVText(f *testing.F) {
	for _, s := range []string{"=cmd()", "a;=1+1", "x\t@SUM(A1)", "e\n=2+2", "\r\n+1", "'=x", "a;'-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := csvText(s)
		for i := range len(got) {
			if strings.IndexByte(formulaStart, got[i]) >= 0 && (i == 0 || strings.IndexByte(cellBreak, got[i-1]) >= 0) {
				t.Fatalf("csvText(%q) = %q: a cell starts with %q at %d", s, got, got[i], i)
			}
		}
		if strings.ReplaceAll(got, "'", "") != strings.ReplaceAll(s, "'", "") {
			t.Fatalf("csvText(%q) = %q: more than quotes added", s, got)
		}
	})
}

// TestTwinPatchNumberOutOfRange: a desired patch holding a number no
// double holds is refused saying so, not as "must be a JSON object"
// (which it is; FuzzAPI's seed twin-bignum).
func TestTwinPatchNumberOutOfRange(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	res, body := e.do("PATCH", "/devices/dev-1/twin", e.tokens["operator"], `{"desired":{"a":{"b":1e400}}}`)
	e.mustStatus(res, body, 400)
	if eb := checkErrorBody(t, res, body); !strings.Contains(eb.Error.Message, "number") {
		t.Fatalf("message %q", eb.Error.Message)
	}
	res, body = e.do("GET", "/devices/dev-1/twin", e.tokens["viewer"], nil)
	e.mustStatus(res, body, 200)
	if tw := decode[devices.Twin](t, body); tw.DesiredVersion != 0 {
		t.Fatalf("twin changed: %s", body)
	}
}

// TestCommandParamsNumberOutOfRange: params holding a number no double
// holds are refused saying so, as a twin patch's are, and no command is
// created or sent (a device decoding it would fail on it).
func TestCommandParamsNumberOutOfRange(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	res, body := e.do("POST", "/devices/dev-1/commands", e.tokens["operator"], `{"name":"set","params":{"n":[1,{"m":-1e400}]}}`)
	e.mustStatus(res, body, 400)
	if eb := checkErrorBody(t, res, body); !strings.Contains(eb.Error.Message, "number") {
		t.Fatalf("message %q", eb.Error.Message)
	}
	res, body = e.do("GET", "/devices/dev-1/commands", e.tokens["viewer"], nil)
	e.mustStatus(res, body, 200)
	if strings.Contains(string(body), `"set"`) {
		t.Fatalf("a command was created: %s", body)
	}
}

// TestCommandWaitClientGone: a client that gives up on a command's wait
// (its request cancelled) is not a failure of the server: nothing is
// logged as an error (it was, "api: request failed", with the context's
// error), and the command stays pending for its device.
func TestCommandWaitClientGone(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "POST", e.srv.URL+APIPrefix+"/devices/dev-1/commands",
		strings.NewReader(`{"name":"reboot","wait":true,"timeout":60}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.tokens["operator"])
	done := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			err = fmt.Errorf("answered %s", res.Status)
		}
		done <- err
	}()
	// The command exists (its wait has begun) before the client goes.
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		res, body := e.do("GET", "/devices/dev-1/commands", e.tokens["viewer"], nil)
		if res.StatusCode != 200 || !strings.Contains(string(body), `"reboot"`) {
			return fmt.Errorf("no command yet: %s", body)
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client's request: %v", err)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(e.logs.String(), `route="POST /devices/{id}/commands"`) {
			return fmt.Errorf("the request's end is not logged yet:\n%s", e.logs.String())
		}
		return nil
	})
	if logs := e.logs.String(); strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "status=499") {
		t.Fatalf("logged as an error, or not as status 499:\n%s", logs)
	}
	res, body := e.do("GET", "/devices/dev-1/commands", e.tokens["viewer"], nil)
	e.mustStatus(res, body, 200)
	if !strings.Contains(string(body), `"status":"pending"`) {
		t.Fatalf("the command is not pending: %s", body)
	}
}

// TestCommandWaitPruned: a command deleted while its request waits for it
// (its device had commands.max_per_device newer ones) is answered 404,
// not 500 with an error logged.
func TestCommandWaitPruned(t *testing.T) {
	e := newDataEnv(t, func(o *dataEnvOptions) { o.maxCommands = 1 })
	e.createDevice(devices.NewDevice{ID: "dev-1"})
	done := make(chan *http.Response, 1)
	go func() {
		res, _ := e.do("POST", "/devices/dev-1/commands", e.tokens["operator"], map[string]any{"name": "first", "wait": true, "timeout": 60})
		done <- res
	}()
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		res, body := e.do("GET", "/devices/dev-1/commands", e.tokens["viewer"], nil)
		if res.StatusCode != 200 || !strings.Contains(string(body), `"first"`) {
			return fmt.Errorf("no command yet: %s", body)
		}
		return nil
	})
	res, body := e.do("POST", "/devices/dev-1/commands", e.tokens["operator"], map[string]any{"name": "second", "timeout": 60})
	e.mustStatus(res, body, 202)
	select {
	case res := <-done:
		if res.StatusCode != http.StatusNotFound {
			t.Fatalf("the waiting request: %s, want 404", res.Status)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting request is still waiting after 30s")
	}
	if logs := e.logs.String(); strings.Contains(logs, "level=ERROR") {
		t.Fatalf("logged as an error:\n%s", logs)
	}
}
