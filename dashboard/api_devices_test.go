package dashboard

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testmqtt"
)

func TestDeviceLifecycle(t *testing.T) {
	e := newAPIEnv(t)
	admin := e.tokens["admin"]
	d := e.createDevice(devices.NewDevice{ID: "pump-1", Name: "Pump 1", Type: "pump", Labels: map[string]string{"site": "north"}})
	if d.ID != "pump-1" || d.Name != "Pump 1" || d.Type != "pump" || d.Labels["site"] != "north" || !d.Enabled || len(d.Secret) < 40 {
		t.Fatalf("created %+v", d)
	}
	gen := e.createDevice(devices.NewDevice{Type: "valve"})
	if !devices.ValidID(gen.ID) || gen.Secret == "" {
		t.Fatalf("generated id %+v", gen)
	}

	res, body := e.do("GET", "/devices/pump-1", admin, nil)
	e.mustStatus(res, body, 200)
	if strings.Contains(string(body), `"secret"`) {
		t.Fatalf("GET shows a secret: %s", body)
	}

	res, body = e.do("PATCH", "/devices/pump-1", admin, map[string]any{"name": "Pump One", "enabled": false, "labels": map[string]string{"site": "south"}})
	e.mustStatus(res, body, 200)
	got := decode[devices.Device](t, body)
	if got.Name != "Pump One" || got.Enabled || got.Labels["site"] != "south" || got.Type != "pump" {
		t.Fatalf("patched %+v", got)
	}

	res, body = e.do("POST", "/devices/pump-1/secret", admin, nil)
	e.mustStatus(res, body, 200)
	rot := decode[devices.DeviceSecret](t, body)
	if rot.Secret == "" || rot.Secret == d.Secret || rot.ID != "pump-1" {
		t.Fatalf("rotated %+v", rot)
	}

	res, body = e.do("DELETE", "/devices/pump-1", admin, nil)
	e.mustStatus(res, body, http.StatusNoContent)
	res, body = e.do("GET", "/devices/pump-1", admin, nil)
	e.mustStatus(res, body, 404)
	res, body = e.do("DELETE", "/devices/pump-1", admin, nil)
	e.mustStatus(res, body, 404)
	res, body = e.do("POST", "/devices/pump-1/secret", admin, nil)
	e.mustStatus(res, body, 404)
}

func TestListDevicesFilterAndPages(t *testing.T) {
	e := newAPIEnv(t)
	var batch []devices.NewDevice
	for i := 0; i < 25; i++ {
		typ := "meter"
		if i%5 == 0 {
			typ = "pump"
		}
		batch = append(batch, devices.NewDevice{ID: fmt.Sprintf("d%02d", i), Name: fmt.Sprintf("Device %d", i), Type: typ,
			Labels: map[string]string{"floor": fmt.Sprint(i % 3)}})
	}
	res, body := e.do("POST", "/devices/bulk", e.tokens["admin"], bulkRequest{Devices: batch})
	e.mustStatus(res, body, 201)

	tests := []struct {
		query string
		want  int
	}{
		{"", 25},
		{"type=pump", 5},
		{"label=floor%3D1", 8},
		{"label=floor", 25},
		{"q=D1", 10},
		{"status=online", 0},
		{"status=offline", 25},
		{"type=pump&label=floor%3D0", 2},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			defer e.use(t)()
			seen := map[string]bool{}
			cursor := ""
			for pages := 0; ; pages++ {
				res, body := e.do("GET", "/devices?limit=7&"+tc.query+"&cursor="+cursor, e.tokens["viewer"], nil)
				e.mustStatus(res, body, 200)
				l := decode[deviceList](t, body)
				if len(l.Devices) > 7 || l.Devices == nil {
					t.Fatalf("page of %d", len(l.Devices))
				}
				for _, d := range l.Devices {
					if seen[d.ID] {
						t.Fatalf("%s twice", d.ID)
					}
					seen[d.ID] = true
				}
				if cursor = l.NextCursor; cursor == "" || pages > 10 {
					break
				}
			}
			if len(seen) != tc.want {
				t.Fatalf("listed %d, want %d", len(seen), tc.want)
			}
		})
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "status=maybe", "cursor=!!", "colour=red", "limit=1&limit=2"} {
		res, body := e.do("GET", "/devices?"+q, e.tokens["viewer"], nil)
		e.mustStatus(res, body, 400)
	}
}

// TestBadInputChangesNothing sends bad requests of every kind and checks
// each gets a 4xx error body and leaves the stored devices and users as
// they were.
func TestBadInputChangesNothing(t *testing.T) {
	e := newAPIEnv(t)
	e.createDevice(devices.NewDevice{ID: "keep", Name: "Keep", Type: "t", Labels: map[string]string{"a": "b"}})
	huge := `{"id":"big","name":"` + strings.Repeat("x", maxBody) + `"}`
	bulkHuge := `{"devices":[` + strings.Repeat(`{"name":"`+strings.Repeat("y", 1000)+`"},`, maxBulkBody/1000) + `{}]}`
	tooMany := `{"devices":[` + strings.Repeat(`{},`, devices.MaxBulk) + `{}]}`
	dupBulk := map[string]any{"devices": []any{map[string]string{"id": "n1"}, map[string]string{"id": "n1"}}}
	halfBad := map[string]any{"devices": []any{map[string]string{"id": "n2"}, map[string]string{"id": "bad/id"}}}
	takenBulk := map[string]any{"devices": []any{map[string]string{"id": "n3"}, map[string]string{"id": "keep"}}}
	tests := []struct {
		name   string
		method string
		path   string
		body   any
		header []string
		want   int
	}{
		{"malformed json", "POST", "/devices", `{"id":"x1",`, nil, 400},
		{"syntax error", "POST", "/devices", `{"id" "x1"}`, nil, 400},
		{"unknown field", "POST", "/devices", `{"id":"x1","colour":"red"}`, nil, 400},
		{"secret supplied", "POST", "/devices", `{"id":"x1","secret":"mine"}`, nil, 400},
		{"wrong type", "POST", "/devices", `{"id":42}`, nil, 400},
		{"array body", "POST", "/devices", `[{"id":"x1"}]`, nil, 400},
		{"null body", "POST", "/devices", `null`, nil, 400},
		{"string body", "POST", "/devices", `"x1"`, nil, 400},
		{"null bulk", "POST", "/devices/bulk", ` null`, nil, 400},
		{"two values", "POST", "/devices", `{"id":"x1"} {"id":"x2"}`, nil, 400},
		{"trailing garbage", "POST", "/devices", `{"id":"x1"}x`, nil, 400},
		{"empty body", "POST", "/devices", ``, nil, 400},
		{"not json content type", "POST", "/devices", `{"id":"x1"}`, []string{"Content-Type", "text/plain"}, 415},
		{"no content type", "POST", "/devices", `{"id":"x1"}`, []string{"Content-Type", ""}, 415},
		{"huge body", "POST", "/devices", huge, nil, 413},
		{"huge bulk", "POST", "/devices/bulk", bulkHuge, nil, 413},
		{"too many in bulk", "POST", "/devices/bulk", tooMany, nil, 413},
		{"empty bulk", "POST", "/devices/bulk", `{"devices":[]}`, nil, 400},
		{"id with slash", "POST", "/devices", map[string]string{"id": "a/b"}, nil, 400},
		{"id with plus", "POST", "/devices", map[string]string{"id": "a+"}, nil, 400},
		{"id with hash", "POST", "/devices", map[string]string{"id": "#"}, nil, 400},
		{"id with sql quote", "POST", "/devices", map[string]string{"id": "x'; DROP TABLE devices; --"}, nil, 400},
		{"id with space", "POST", "/devices", map[string]string{"id": "a b"}, nil, 400},
		{"id too long", "POST", "/devices", map[string]string{"id": strings.Repeat("a", 129)}, nil, 400},
		{"id only dots", "POST", "/devices", map[string]string{"id": ".."}, nil, 400},
		{"duplicate id", "POST", "/devices", map[string]string{"id": "keep"}, nil, 409},
		{"device id is a user name", "POST", "/devices", map[string]string{"id": "admin"}, nil, 409},
		{"user name is a device id", "POST", "/users", map[string]string{"username": "keep", "password": "password-9", "role": "viewer"}, nil, 409},
		{"duplicate user", "POST", "/users", map[string]string{"username": "viewer", "password": "password-9", "role": "viewer"}, nil, 409},
		{"bad role", "POST", "/users", map[string]string{"username": "u9", "password": "password-9", "role": "root"}, nil, 400},
		{"short password", "POST", "/users", map[string]string{"username": "u9", "password": "pw", "role": "viewer"}, nil, 400},
		{"user name with slash", "POST", "/users", map[string]string{"username": "u/9", "password": "password-9", "role": "viewer"}, nil, 400},
		{"user unknown field", "POST", "/users", `{"username":"u9","password":"password-9","role":"viewer","admin":true}`, nil, 400},
		{"duplicate in bulk", "POST", "/devices/bulk", dupBulk, nil, 409},
		{"one bad in bulk", "POST", "/devices/bulk", halfBad, nil, 400},
		{"one taken in bulk", "POST", "/devices/bulk", takenBulk, nil, 409},
		{"bad label key", "POST", "/devices", map[string]any{"id": "x5", "labels": map[string]string{"a b": "c"}}, nil, 400},
		{"label not a string", "POST", "/devices", `{"id":"x5","labels":{"a":1}}`, nil, 400},
		{"control char in name", "POST", "/devices", map[string]string{"id": "x6", "name": "a\x00b"}, nil, 400},
		{"patch unknown field", "PATCH", "/devices/keep", `{"secret":"x"}`, nil, 400},
		{"patch bad type", "PATCH", "/devices/keep", `{"enabled":"no"}`, nil, 400},
		{"patch malformed", "PATCH", "/devices/keep", `{"name":`, nil, 400},
		{"patch huge", "PATCH", "/devices/keep", `{"name":"` + strings.Repeat("z", maxBody) + `"}`, nil, 413},
		{"patch bad label", "PATCH", "/devices/keep", map[string]any{"labels": map[string]string{"": "x"}}, nil, 400},
		{"patch missing", "PATCH", "/devices/nope", map[string]string{"name": "x"}, nil, 404},
		{"grant of another device", "POST", "/devices", `{"id":"g1","topics":[{"filter":"devices/keep/telemetry","access":"publish"}]}`, nil, 400},
		{"grant of everything", "PATCH", "/devices/keep", `{"topics":[{"filter":"#","access":"subscribe"}]}`, nil, 400},
		{"grant of $SYS", "PATCH", "/devices/keep", `{"topics":[{"filter":"$SYS/#","access":"subscribe"}]}`, nil, 400},
		{"grant publishing commands", "PATCH", "/devices/keep", `{"topics":[{"filter":"devices/%c/commands/x","access":"all"}]}`, nil, 400},
		{"grant bad access", "PATCH", "/devices/keep", `{"topics":[{"filter":"a/b","access":"write"}]}`, nil, 400},
		{"grant bad filter", "PATCH", "/devices/keep", `{"topics":[{"filter":"a/#/b","access":"all"}]}`, nil, 400},
		{"grant unknown field", "PATCH", "/devices/keep", `{"topics":[{"filter":"a/b","access":"all","qos":1}]}`, nil, 400},
		{"grant not a list", "PATCH", "/devices/keep", `{"topics":{"filter":"a/b"}}`, nil, 400},
		{"grant bad in bulk", "POST", "/devices/bulk", `{"devices":[{"id":"g2"},{"id":"g3","topics":[{"filter":"+/x","access":"all"}]}]}`, nil, 400},
		{"path id with plus", "GET", "/devices/a+b", nil, nil, 404},
		{"path id with encoded slash", "DELETE", "/devices/keep%2Fx", nil, nil, 404},
		{"path id with hash", "DELETE", "/devices/%23", nil, nil, 404},
		{"path id with quote", "DELETE", "/devices/keep'%20OR%20'1'='1", nil, nil, 404},
		{"rotate with body", "POST", "/devices/keep/secret", `{"secret":"mine"}`, nil, 400},
		{"unknown route", "GET", "/nothing", nil, nil, 404},
		{"wrong method", "PUT", "/devices/keep", map[string]string{"name": "x"}, nil, 405},
	}
	before := e.snapshot()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer e.use(t)()
			res, body := e.do(tc.method, tc.path, e.tokens["admin"], tc.body, tc.header...)
			e.mustStatus(res, body, tc.want)
			if after := e.snapshot(); after != before {
				t.Fatalf("stored data changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestBulkRegistersThousand(t *testing.T) {
	e := newAPIEnv(t)
	var req bulkRequest
	for i := 0; i < 1000; i++ {
		req.Devices = append(req.Devices, devices.NewDevice{ID: fmt.Sprintf("bulk-%04d", i), Type: "sensor"})
	}
	res, body := e.do("POST", "/devices/bulk", e.tokens["admin"], req)
	e.mustStatus(res, body, http.StatusCreated)
	out := decode[bulkResponse](t, body)
	secrets := map[string]bool{}
	for i, d := range out.Devices {
		if d.ID != req.Devices[i].ID || d.Secret == "" || secrets[d.Secret] {
			t.Fatalf("device %d: %+v", i, d)
		}
		secrets[d.Secret] = true
	}
	if len(out.Devices) != 1000 {
		t.Fatalf("%d devices back", len(out.Devices))
	}
	res, body = e.do("GET", "/devices?limit=1000", e.tokens["viewer"], nil)
	e.mustStatus(res, body, 200)
	l := decode[deviceList](t, body)
	if len(l.Devices) != 1000 || l.NextCursor != "" {
		t.Fatalf("listed %d, next %q", len(l.Devices), l.NextCursor)
	}
	// Each secret works: the registry authenticates the device with it.
	for _, d := range out.Devices[:10] {
		if id, err := e.reg.Authenticate(t.Context(), d.ID, d.Secret); err != nil || id.Kind != devices.KindDevice {
			t.Fatalf("device %s does not authenticate: %v", d.ID, err)
		}
	}
}

// TestSecretsShownOnce checks that a device secret, a user's password and
// the tokens appear in no response but the one that issues them, and in
// no log line.
func TestSecretsShownOnce(t *testing.T) {
	e := newAPIEnv(t)
	admin := e.tokens["admin"]
	d := e.createDevice(devices.NewDevice{ID: "s1"})
	res, body := e.do("POST", "/devices/s1/secret", admin, nil)
	e.mustStatus(res, body, 200)
	rotated := decode[devices.DeviceSecret](t, body).Secret
	res, body = e.do("POST", "/users", admin, map[string]string{"username": "newbie", "password": "newbie-password-77", "role": "viewer"})
	e.mustStatus(res, body, 201)
	if strings.Contains(string(body), "newbie-password-77") || strings.Contains(string(body), "password") {
		t.Fatalf("user response shows the password: %s", body)
	}
	res, body = e.do("POST", "/auth/login", "", map[string]string{"username": "newbie", "password": "wrong-password-88"})
	e.mustStatus(res, body, 401)

	session := e.login("newbie", "newbie-password-77")
	res, body = e.do("GET", "/devices/s1", session, nil)
	e.mustStatus(res, body, 200)
	secrets := []string{d.Secret, rotated, session, "newbie-password-77", "wrong-password-88", adminPassword, viewerPassword, operatorPassword}
	for _, tok := range e.tokens {
		secrets = append(secrets, tok)
	}
	var later []string
	for _, p := range []string{"/devices", "/devices/s1", "/users", "/openapi.json"} {
		res, body := e.do("GET", p, admin, nil)
		e.mustStatus(res, body, 200)
		later = append(later, string(body))
	}
	res, body = e.do("PATCH", "/devices/s1", admin, map[string]string{"name": "renamed"})
	e.mustStatus(res, body, 200)
	later = append(later, string(body))
	logs := e.logs.String()
	if !strings.Contains(logs, "api: device secret rotated") {
		t.Fatalf("log capture is not working:\n%s", logs)
	}
	for _, s := range secrets {
		for _, b := range later {
			if strings.Contains(b, s) {
				t.Fatalf("a later response shows a secret: %s", b)
			}
		}
		if strings.Contains(logs, s) {
			t.Fatalf("the log holds a secret")
		}
	}
}

// TestDeviceTopicsAPI: grants go in with POST, bulk and PATCH, come back
// on GET, and a viewer cannot set them.
func TestDeviceTopicsAPI(t *testing.T) {
	e := newAPIEnv(t)
	admin := e.tokens["admin"]
	res, body := e.do("POST", "/devices", admin, map[string]any{"id": "tas-1", "type": "tasmota",
		"topics": []map[string]string{{"filter": "tele/%c/#", "access": "publish"}}})
	e.mustStatus(res, body, http.StatusCreated)
	if d := decode[devices.DeviceSecret](t, body); len(d.Topics) != 1 || d.Topics[0].Filter != "tele/%c/#" {
		t.Fatalf("created %+v", d.Topics)
	}
	res, body = e.do("POST", "/devices/bulk", admin, map[string]any{"devices": []map[string]any{
		{"id": "sh-1", "topics": []map[string]string{{"filter": "shellies/%c/#", "access": "all"}}}, {"id": "plain"}}})
	e.mustStatus(res, body, http.StatusCreated)
	res, body = e.do("PATCH", "/devices/tas-1", e.tokens["viewer"], map[string]any{"topics": []any{}})
	e.mustStatus(res, body, http.StatusForbidden)
	res, body = e.do("PATCH", "/devices/tas-1", admin, map[string]any{"topics": []map[string]string{{"filter": "stat/%c/#", "access": "subscribe"}}})
	e.mustStatus(res, body, http.StatusOK)
	for id, want := range map[string]string{"tas-1": `"topics":[{"filter":"stat/%c/#","access":"subscribe"}]`,
		"sh-1": `"topics":[{"filter":"shellies/%c/#","access":"all"}]`, "plain": `"topics":[]`} {
		res, body = e.do("GET", "/devices/"+id, admin, nil)
		e.mustStatus(res, body, http.StatusOK)
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s lacks %s", id, body, want)
		}
	}
}

// TestDeviceTelemetryNotStored: a device over
// telemetry.device_values_rate has its samples routed but not stored;
// GET /devices/{id} says how many and when the last was, to a viewer
// too, and another device shows none.
func TestDeviceTelemetryNotStored(t *testing.T) {
	e := newDataEnv(t, func(o *dataEnvOptions) { o.valuesRate, o.valuesBurst = 1, 256 })
	e.createDevice(devices.NewDevice{ID: "flood"})
	e.createDevice(devices.NewDevice{ID: "calm"})
	var b strings.Builder
	b.WriteString("{")
	for i := range 200 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"m%d":%d`, i, i)
	}
	b.WriteString("}")
	start := time.Now().UTC().Truncate(time.Second)
	dev := e.device(t, "flood", "")
	for range 3 { // 200 values fit the burst of 256, the next two do not
		dev.Publish("devices/flood/telemetry", 1, false, b.String()).Wait()
	}
	e.device(t, "calm", "").Publish("devices/calm/telemetry", 1, false, `{"t":1}`).Wait()
	type answer struct {
		ID                 string `json:"id"`
		TelemetryNotStored *struct {
			Samples int64      `json:"samples"`
			LastAt  *time.Time `json:"last_at"`
			Since   time.Time  `json:"since"`
		} `json:"telemetry_not_stored"`
	}
	var got answer
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		res, body := e.do("GET", "/devices/flood", e.tokens["viewer"], nil)
		e.mustStatus(res, body, 200)
		got = decode[answer](t, body)
		if ns := got.TelemetryNotStored; ns == nil || ns.Samples != 2 {
			return fmt.Errorf("flood: %s, want 2 samples not stored", body)
		}
		return nil
	})
	ns := got.TelemetryNotStored
	if ns.LastAt == nil || ns.LastAt.Before(start) || ns.LastAt.After(time.Now()) || ns.Since.After(*ns.LastAt) {
		t.Errorf("flood: last at %v, since %v; want a time since %v", ns.LastAt, ns.Since, start)
	}
	res, body := e.do("GET", "/devices/calm", e.tokens["viewer"], nil)
	e.mustStatus(res, body, 200)
	if ns := decode[answer](t, body).TelemetryNotStored; ns == nil || ns.Samples != 0 || ns.LastAt != nil {
		t.Errorf("calm: %s, want none not stored", body)
	}
}
