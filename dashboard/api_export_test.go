package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// exportDoc is the export document as a client reads it.
type exportDoc struct {
	Format     string               `json:"format"`
	ExportedAt time.Time            `json:"exported_at"`
	ExportedBy string               `json:"exported_by"`
	Device     map[string]any       `json:"device"`
	Twin       devices.Twin         `json:"twin"`
	Session    *exportSession       `json:"session"`
	Commands   []devices.Command    `json:"commands"`
	Audit      []devices.AuditEntry `json:"audit"`
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
	if s := doc.Session; s == nil || s.ClientID != "dev-1" || !s.Online || s.Transport != "tcp" || s.Persistent {
		t.Errorf("session %+v", doc.Session)
	}
	// The audit log: the device's registration and this export, newest
	// first; nothing about dev-2.
	if len(doc.Audit) != 2 || doc.Audit[0].Action != devices.AuditDeviceExported || doc.Audit[0].Actor != "admin" ||
		doc.Audit[1].Action != devices.AuditDeviceCreated || doc.Audit[1].Target != "dev-1" {
		t.Errorf("audit %+v", doc.Audit)
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

// TestMeasureExportMemory exports devices with 100,000 and 1,000,000
// points and reports the peak heap while the document streams: with the
// export written a page at a time, the peak does not grow with the points.
// A measurement, run only when asked:
//
//	TETHER_MEASURE=1 go test -run TestMeasureExportMemory -v ./dashboard
func TestMeasureExportMemory(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	e := newDataEnv(t)
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Millisecond)
	for _, n := range []int{100_000, 1_000_000} {
		id := fmt.Sprintf("big-%d", n)
		e.createDevice(devices.NewDevice{ID: id})
		for i := range n {
			s := devices.Sample{TS: base.Add(time.Duration(i) * time.Millisecond), JSON: []byte(fmt.Sprintf(`{"temperature":%d.5,"humidity":%d,"ok":true}`, i%40, i%100)), N: 3}
			for !e.tel.Add(id, s, time.Now()) {
				if err := e.tel.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := e.tel.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.HeapInuse
		var peak atomic.Uint64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			var ms runtime.MemStats
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}()
		req, _ := http.NewRequest("GET", e.srv.URL+APIPrefix+"/devices/"+id+"/export", nil)
		req.Header.Set("Authorization", "Bearer "+e.tokens["admin"])
		start := time.Now()
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		size, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		close(stop)
		<-sampled
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("export: %d %v", res.StatusCode, err)
		}
		t.Logf("MEASURE export points=%d document_bytes=%d took=%v heap_before_mib=%.1f heap_peak_mib=%.1f growth_mib=%.1f",
			n, size, time.Since(start).Round(time.Millisecond), float64(before)/(1<<20), float64(peak.Load())/(1<<20),
			(float64(peak.Load())-float64(before))/(1<<20))
	}
}
