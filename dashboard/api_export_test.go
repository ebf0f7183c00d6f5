package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// exportDoc is the export document as a client reads it.
type exportDoc struct {
	Format     string            `json:"format"`
	ExportedAt time.Time         `json:"exported_at"`
	ExportedBy string            `json:"exported_by"`
	Device     map[string]any    `json:"device"`
	Twin       devices.Twin      `json:"twin"`
	Session    *exportSession    `json:"session"`
	Commands   []devices.Command `json:"commands"`
	Telemetry  []struct {
		TS     time.Time      `json:"ts"`
		Values map[string]any `json:"values"`
	} `json:"telemetry"`
}

// TestExportDevice stores more points than one telemetry page holds, with
// a run of points in one millisecond across the page boundary, plus
// commands, a twin and a live session, and checks the document holds each
// exactly once, in order, without the secret; lesser identities are
// refused.
func TestExportDevice(t *testing.T) {
	e := newDataEnv(t)
	secret := e.createDevice(devices.NewDevice{ID: "dev-1", Name: "Boiler", Labels: map[string]string{"site": "north"}}).Secret
	e.createDevice(devices.NewDevice{ID: "dev-2"})
	admin, op := e.tokens["admin"], e.tokens["operator"]

	// Points 0..n-1, oldest first; those in [sameFrom, sameTo) share one
	// millisecond, straddling the end of the first page.
	const n = devices.MaxTelemetryPoints*2 + 7
	const sameFrom, sameTo = devices.MaxTelemetryPoints - 5, devices.MaxTelemetryPoints + 5
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	for i := range n {
		ms := i
		if i >= sameFrom && i < sameTo {
			ms = sameFrom
		}
		s := devices.Sample{TS: base.Add(time.Duration(ms) * time.Millisecond), JSON: []byte(fmt.Sprintf(`{"n":%d}`, i)), N: 1}
		for !e.tel.Add("dev-1", s, time.Now()) {
			if err := e.tel.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Another device's points are not in the export.
	e.tel.Add("dev-2", devices.Sample{TS: base, JSON: []byte(`{"n":-1}`), N: 1}, time.Now())
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	e.device(t, "dev-1", "ok") // connected, answering commands
	for _, name := range []string{"reboot", "ping"} {
		res, body := e.do("POST", "/devices/dev-1/commands", op, map[string]any{"name": name, "params": map[string]any{"x": 1}, "timeout": 10, "wait": true})
		e.mustStatus(res, body, 200)
	}
	res, body := e.do("PATCH", "/devices/dev-1/twin", op, map[string]any{"desired": map[string]any{"rate": 5}})
	e.mustStatus(res, body, 200)

	t.Run("lesser identities are refused", func(t *testing.T) {
		defer e.use(t)()
		for _, role := range []string{"operator", "viewer"} {
			res, body := e.do("GET", "/devices/dev-1/export", e.tokens[role], nil)
			e.mustStatus(res, body, http.StatusForbidden)
		}
		res, body := e.do("GET", "/devices/dev-1/export", "", nil)
		e.mustStatus(res, body, http.StatusUnauthorized)
		// A device's own secret is no way in either.
		res, body = e.do("GET", "/devices/dev-1/export", secret, nil)
		e.mustStatus(res, body, http.StatusUnauthorized)
		res, body = e.do("GET", "/devices/ghost/export", admin, nil)
		e.mustStatus(res, body, http.StatusNotFound)
	})

	res, body = e.do("GET", "/devices/dev-1/export", admin, nil)
	e.mustStatus(res, body, http.StatusOK)
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if bytes.Contains(body, []byte(secret)) || bytes.Contains(body, []byte(`"secret"`)) {
		t.Fatal("the export holds the device secret")
	}
	var doc exportDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if doc.Format != ExportFormat || doc.ExportedBy != "admin" || doc.ExportedAt.IsZero() {
		t.Errorf("header: format %q, by %q, at %v", doc.Format, doc.ExportedBy, doc.ExportedAt)
	}
	if doc.Device["id"] != "dev-1" || doc.Device["name"] != "Boiler" || fmt.Sprint(doc.Device["labels"]) != "map[site:north]" {
		t.Errorf("device %v", doc.Device)
	}
	if doc.Twin.Desired["rate"] != 5.0 || doc.Twin.DesiredVersion != 1 {
		t.Errorf("twin %+v", doc.Twin)
	}
	if len(doc.Commands) != 2 || doc.Commands[0].Name != "ping" || doc.Commands[1].Name != "reboot" || doc.Commands[0].Status != "succeeded" {
		t.Errorf("commands %+v", doc.Commands)
	}
	if s := doc.Session; s == nil || s.ClientID != "dev-1" || !s.Online || s.Transport != "tcp" ||
		len(s.Subscriptions) != 1 || s.Subscriptions[0].Filter != "devices/dev-1/commands/#" {
		t.Errorf("session %+v", doc.Session)
	}
	if len(doc.Telemetry) != n {
		t.Fatalf("%d points, want %d", len(doc.Telemetry), n)
	}
	for i, p := range doc.Telemetry {
		if p.Values["n"] != float64(i) {
			t.Fatalf("point %d is n=%v (ts %v): points lost, repeated or out of order", i, p.Values["n"], p.TS)
		}
	}

	// A device with nothing stored: empty arrays, no session.
	res, body = e.do("GET", "/devices/dev-2/export", admin, nil)
	e.mustStatus(res, body, http.StatusOK)
	doc = exportDoc{}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Session != nil || len(doc.Commands) != 0 || len(doc.Telemetry) != 1 || !strings.Contains(string(body), `"commands":[]`) {
		t.Errorf("dev-2 export: %s", body)
	}
}
