package devices

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// openTestRegistry opens a registry on a fresh database (openBackendDB).
func openTestRegistry(t testing.TB) (*Registry, *DB) {
	t.Helper()
	db := openBackendDB(t)
	r, err := OpenRegistry(context.Background(), db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.hashCost = bcrypt.MinCost // the race detector makes bcrypt very slow
	t.Cleanup(func() { r.Close() })
	return r, db
}

func TestMigrationsIdempotent(t *testing.T) {
	sqliteOnly(t, "reopens the file")
	dir := t.TempDir()
	ctx := context.Background()
	var secret string
	for i := range 3 {
		db, err := OpenDB(dir)
		if err != nil {
			t.Fatal(err)
		}
		r, err := OpenRegistry(ctx, db, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if i == 0 {
			if _, secret, err = r.CreateDevice(ctx, NewDevice{ID: "d1"}); err != nil {
				t.Fatal(err)
			}
		}
		// The cache is reloaded from the file: the secret still works.
		if id, err := r.Authenticate(ctx, "d1", secret); err != nil || id.Kind != KindDevice {
			t.Fatalf("open %d: authenticate: %v %+v", i, err, id)
		}
		var n int
		db.R.QueryRow(`SELECT COUNT(*) FROM schema_migrations WHERE component = 'registry'`).Scan(&n)
		if n != len(registrySchema) {
			t.Fatalf("open %d: %d registry migrations recorded, want %d", i, n, len(registrySchema))
		}
		r.Close()
		db.Close()
	}
}

func TestCreateDeviceValidation(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	if _, err := r.CreateUser(ctx, "alice", "password1", RoleViewer); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.CreateDevice(ctx, NewDevice{ID: "taken"}); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[fmt.Sprint("k", i)] = "v"
	}
	tests := []struct {
		name string
		nd   NewDevice
		want error // ErrConflict, or nil for an *InvalidError
	}{
		{"slash", NewDevice{ID: "a/b"}, nil},
		{"plus", NewDevice{ID: "a+b"}, nil},
		{"hash", NewDevice{ID: "a#"}, nil},
		{"quote", NewDevice{ID: "a'; DROP TABLE devices;--"}, nil},
		{"space", NewDevice{ID: "a b"}, nil},
		{"dots", NewDevice{ID: ".."}, nil},
		{"too long", NewDevice{ID: strings.Repeat("a", 129)}, nil},
		{"unicode", NewDevice{ID: "caf\u00e9"}, nil},
		{"too many labels", NewDevice{ID: "x1", Labels: many}, nil},
		{"bad label key", NewDevice{ID: "x2", Labels: map[string]string{"a b": "v"}}, nil},
		{"long label value", NewDevice{ID: "x3", Labels: map[string]string{"k": strings.Repeat("v", MaxLabelValue+1)}}, nil},
		{"control in name", NewDevice{ID: "x4", Name: "a\x00b"}, nil},
		{"duplicate", NewDevice{ID: "taken"}, ErrConflict},
		{"user name", NewDevice{ID: "alice"}, ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := r.CreateDevice(ctx, tt.nd)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("err = %v, want *InvalidError", err)
			}
		})
	}
	devs, _, err := r.ListDevices(ctx, DeviceFilter{})
	if err != nil || len(devs) != 1 {
		t.Fatalf("after bad input: %d devices (%v), want 1", len(devs), err)
	}
	// And the other way round: a user named like a device.
	if _, err := r.CreateUser(ctx, "taken", "password1", RoleViewer); !errors.Is(err, ErrConflict) {
		t.Fatalf("user named like a device: %v, want ErrConflict", err)
	}
}

func TestCreateDevicesAllOrNothing(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	bad := []NewDevice{{ID: "b1"}, {ID: "b2"}, {ID: "b1"}}
	if _, err := r.CreateDevices(ctx, bad); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate in batch: %v", err)
	}
	bad = []NewDevice{{ID: "b1"}, {ID: "b/2"}}
	var ie *InvalidError
	if _, err := r.CreateDevices(ctx, bad); !errors.As(err, &ie) || ie.Field != "devices[1].id" {
		t.Fatalf("bad id in batch: %v", err)
	}
	devs, _, _ := r.ListDevices(ctx, DeviceFilter{})
	if len(devs) != 0 {
		t.Fatalf("%d devices after failed batches", len(devs))
	}
	var nds []NewDevice
	for i := range 500 {
		nds = append(nds, NewDevice{ID: fmt.Sprintf("dev%04d", i)})
	}
	nds = append(nds, NewDevice{}) // generated id
	out, err := r.CreateDevices(ctx, nds)
	if err != nil || len(out) != 501 {
		t.Fatalf("bulk: %d, %v", len(out), err)
	}
	if !strings.HasPrefix(out[500].ID, "dev-") || !ValidID(out[500].ID) || out[500].Name != out[500].ID {
		t.Fatalf("generated id %q name %q", out[500].ID, out[500].Name)
	}
	seen := map[string]bool{}
	for _, d := range out {
		if len(d.Secret) != 43 || seen[d.Secret] {
			t.Fatalf("secret %q", d.Secret)
		}
		seen[d.Secret] = true
	}
}

func TestListDevicesFilterAndPaging(t *testing.T) {
	r, db := openTestRegistry(t)
	ctx := context.Background()
	var nds []NewDevice
	for i := range 25 {
		typ := "sensor"
		if i%5 == 0 {
			typ = "gateway"
		}
		nds = append(nds, NewDevice{ID: fmt.Sprintf("d%02d", i), Name: fmt.Sprintf("Unit %d", i), Type: typ,
			Labels: map[string]string{"site": []string{"north", "south"}[i%2]}})
	}
	if _, err := r.CreateDevices(ctx, nds); err != nil {
		t.Fatal(err)
	}
	db.W.Exec(`UPDATE devices SET online = 1 WHERE id IN ('d01','d02','d03')`)

	// Paging visits every device once, in order.
	var all []string
	cursor := ""
	for pages := 0; ; pages++ {
		devs, next, err := r.ListDevices(ctx, DeviceFilter{Limit: 7, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			all = append(all, d.ID)
		}
		if next == "" {
			if pages != 3 {
				t.Fatalf("%d pages, want 4", pages+1)
			}
			break
		}
		cursor = next
	}
	if len(all) != 25 || all[0] != "d00" || all[24] != "d24" {
		t.Fatalf("paged: %v", all)
	}

	tests := []struct {
		name string
		f    DeviceFilter
		want int
	}{
		{"all", DeviceFilter{}, 25},
		{"online", DeviceFilter{Status: "online"}, 3},
		{"offline", DeviceFilter{Status: "offline"}, 22},
		{"type", DeviceFilter{Type: "gateway"}, 5},
		{"label value", DeviceFilter{Label: "site=north"}, 13},
		{"label set", DeviceFilter{Label: "site"}, 25},
		{"label missing", DeviceFilter{Label: "rack"}, 0},
		{"text id", DeviceFilter{Text: "D1"}, 10},
		{"text name", DeviceFilter{Text: "unit 2"}, 6},
		{"text quote", DeviceFilter{Text: "'%_"}, 0},
		{"combined", DeviceFilter{Type: "sensor", Label: "site=south", Status: "offline"}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, _, err := r.ListDevices(ctx, tt.f)
			if err != nil || len(devs) != tt.want {
				t.Fatalf("got %d (%v), want %d", len(devs), err, tt.want)
			}
		})
	}
	for _, f := range []DeviceFilter{{Status: "busy"}, {Limit: 1001}, {Limit: -1}, {Cursor: "!!"}, {Label: "=x"}} {
		var ie *InvalidError
		if _, _, err := r.ListDevices(ctx, f); !errors.As(err, &ie) {
			t.Errorf("filter %+v: %v, want *InvalidError", f, err)
		}
	}
}

func TestDeviceSecretAndLifecycle(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	var revoked []string
	r.OnRevoke(func(rv Revocation) { revoked = append(revoked, rv.Name) })

	d, secret, err := r.CreateDevice(ctx, NewDevice{ID: "pump-1", Name: "Pump", Type: "pump", Labels: map[string]string{"site": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Enabled || d.Online || d.LastSeen != nil || d.Labels["site"] != "a" {
		t.Fatalf("created %+v", d)
	}
	auth := func(user, pass string) error { _, err := r.Authenticate(ctx, user, pass); return err }
	if err := auth("pump-1", secret); err != nil {
		t.Fatalf("right secret: %v", err)
	}
	for _, c := range [][2]string{{"pump-1", secret + "x"}, {"pump-1", ""}, {"pump-2", secret}, {"", secret}} {
		if err := auth(c[0], c[1]); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("auth %q: %v, want ErrUnauthorized", c[0], err)
		}
	}

	// Rotation: the old secret stops working, the new one works.
	_, secret2, err := r.RotateSecret(ctx, "pump-1")
	if err != nil || secret2 == secret {
		t.Fatal(err)
	}
	if err := auth("pump-1", secret); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("old secret after rotation: %v", err)
	}
	if err := auth("pump-1", secret2); err != nil {
		t.Fatalf("new secret: %v", err)
	}

	// Disable: refused; enable again: accepted.
	off, on := false, true
	name := "Pump A"
	labels := map[string]string{"site": "b", "rack": "3"}
	d, err = r.UpdateDevice(ctx, "pump-1", DevicePatch{Enabled: &off, Name: &name, Labels: &labels})
	if err != nil || d.Enabled || d.Name != "Pump A" || len(d.Labels) != 2 || d.Type != "pump" {
		t.Fatalf("update: %+v %v", d, err)
	}
	if err := auth("pump-1", secret2); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("disabled: %v", err)
	}
	if _, err := r.UpdateDevice(ctx, "pump-1", DevicePatch{Enabled: &on}); err != nil {
		t.Fatal(err)
	}
	if err := auth("pump-1", secret2); err != nil {
		t.Fatalf("enabled again: %v", err)
	}
	if _, err := r.UpdateDevice(ctx, "nope", DevicePatch{Enabled: &on}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update unknown: %v", err)
	}

	if err := r.DeleteDevice(ctx, "pump-1"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteDevice(ctx, "pump-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if _, err := r.Device(ctx, "pump-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := auth("pump-1", secret2); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("deleted: %v", err)
	}
	if strings.Join(revoked, ",") != "pump-1,pump-1,pump-1" {
		t.Fatalf("revoked %v, want rotate, disable, delete", revoked)
	}
}

func TestPresenceAndLastValues(t *testing.T) {
	r, db := openTestRegistry(t)
	ctx := context.Background()
	if _, _, err := r.CreateDevice(ctx, NewDevice{ID: "p1"}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r.RecordPresence(Presence{DeviceID: "p1", Online: true, At: at, Transport: "ws", RemoteAddr: "10.0.0.1:5", ProtocolVersion: 5})
	r.RecordPresence(Presence{DeviceID: "unknown", Online: true})
	waitFor(t, func() bool { d, _ := r.Device(ctx, "p1"); return d.Online })
	d, _ := r.Device(ctx, "p1")
	if d.Transport != "ws" || d.RemoteAddr != "10.0.0.1:5" || d.ProtocolVersion != 5 || !d.LastSeen.Equal(at) {
		t.Fatalf("presence: %+v", d)
	}
	// The telemetry writer's statement, with a time.Time bound directly.
	if _, err := db.W.Exec(`UPDATE devices SET last_values = json_patch(last_values, ?), last_seen = ? WHERE id = ?`,
		`{"temp":21.5}`, at.Add(time.Minute), "p1"); err != nil {
		t.Fatal(err)
	}
	d, _ = r.Device(ctx, "p1")
	if d.LastValues["temp"] != 21.5 || d.LastSeen == nil || !d.LastSeen.Equal(at.Add(time.Minute)) {
		t.Fatalf("last values: %+v %v", d.LastValues, d.LastSeen)
	}
	r.RecordPresence(Presence{DeviceID: "p1", Online: false, At: at.Add(2 * time.Minute)})
	waitFor(t, func() bool { d, _ := r.Device(ctx, "p1"); return !d.Online })
}

// waitFor polls cond until it holds or 5 s pass (testmqtt.CheckFor).
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if !cond() {
			return errors.New("condition not met")
		}
		return nil
	})
}

func TestPresenceStormFlushedOnClose(t *testing.T) {
	sqliteOnly(t, "reopens the file")
	dir := t.TempDir()
	ctx := context.Background()
	db, err := OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err := OpenRegistry(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	nds := make([]NewDevice, n)
	for i := range nds {
		nds[i] = NewDevice{ID: fmt.Sprintf("s%05d", i)}
	}
	if _, err := r.CreateDevices(ctx, nds); err != nil {
		t.Fatal(err)
	}
	// Many goroutines at once, each device online then offline then
	// online: never blocks, never drops, the last record wins.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				id := nds[i].ID
				r.RecordPresence(Presence{DeviceID: id, Online: true, Transport: "tcp"})
				r.RecordPresence(Presence{DeviceID: id, Online: false})
				r.RecordPresence(Presence{DeviceID: id, Online: true, Transport: "wss"})
			}
		}()
	}
	wg.Wait()
	r.Close()
	if _, dropped := r.PresenceStats(); dropped != 0 {
		t.Fatalf("%d dropped", dropped)
	}
	var online, wss int
	db.R.QueryRow(`SELECT COUNT(*), SUM(transport = 'wss') FROM devices WHERE online = 1`).Scan(&online, &wss)
	if online != n || wss != n {
		t.Fatalf("online %d (wss %d), want %d", online, wss, n)
	}
	// After Close, records are refused and counted.
	r.RecordPresence(Presence{DeviceID: "s00000"})
	if _, dropped := r.PresenceStats(); dropped != 1 {
		t.Fatalf("after close: dropped %d", dropped)
	}
}
