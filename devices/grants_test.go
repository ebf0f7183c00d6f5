package devices

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestCheckGrant(t *testing.T) {
	for _, tt := range []struct {
		filter, access string
		ok             bool
	}{
		{"tele/%c/#", "publish", true},
		{"cmnd/%c/#", "subscribe", true},
		{"homeassistant/sensor/%c/config", "all", true},
		{"shellies/shelly-%c/relay/0", "all", true},
		{"zigbee2mqtt/+/set", "subscribe", true},
		{"devices/%c/custom/#", "all", true},
		{"devices/%c/telemetry/+", "publish", true},
		{"tele/%c/#", "read", false},
		{"tele/%c/#", "", false},
		{"", "all", false},
		{"tele/#/x", "all", false},
		{"tele/a+/x", "all", false},
		{"tele/%d/x", "all", false},
		{"tele/%", "all", false},
		{"$SYS/#", "subscribe", false},
		{"$share/g/tele/#", "subscribe", false},
		{"#", "subscribe", false},
		{"+/SENSOR", "publish", false},
		{"devices/other/telemetry", "publish", false},
		{"devices/+/telemetry", "subscribe", false},
		{"devices/#", "subscribe", false},
		{"devices/%c/commands/x", "publish", false},
		{"devices/%c/#", "publish", false},
		{"devices/%c/#", "subscribe", true},
		{"devices/%c/twin/desired", "all", false},
		{"devices/%c/status", "publish", false},
		{"a\x00b", "all", false},
		{strings.Repeat("a", 257), "all", false},
	} {
		err := checkGrant("topics[0]", TopicGrant{Filter: tt.filter, Access: tt.access})
		if (err == nil) != tt.ok {
			t.Errorf("%q %s: err %v, want ok=%v", tt.filter, tt.access, err, tt.ok)
		}
		var ie *InvalidError
		if err != nil && !errors.As(err, &ie) {
			t.Errorf("%q: %T is not an *InvalidError", tt.filter, err)
		}
	}
	many := make([]TopicGrant, MaxGrants+1)
	for i := range many {
		many[i] = TopicGrant{Filter: "t/" + strings.Repeat("x", i+1), Access: "all"}
	}
	if err := checkGrants("topics", "dev-1", many); err == nil {
		t.Error("more than MaxGrants accepted")
	}
	if err := checkGrants("topics", "dev-1", []TopicGrant{{"a/b", "all"}, {"a/b", "publish"}}); err == nil {
		t.Error("a filter granted twice accepted")
	}
}

func TestParseGrant(t *testing.T) {
	g, err := ParseGrant("tele/%c/#:publish")
	if err != nil || g != (TopicGrant{Filter: "tele/%c/#", Access: "publish"}) {
		t.Errorf("got %+v, %v", g, err)
	}
	for _, s := range []string{"tele/%c/#", "tele/%c/#:write", ":all", "#:subscribe"} {
		if _, err := ParseGrant(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestGrantsStoredAndChanged: grants are stored, survive a reopen,
// replaced by a patch, and a change is announced; bad grants change
// nothing.
func TestGrantsStoredAndChanged(t *testing.T) {
	sqliteOnly(t, "reopens the file")
	ctx := context.Background()
	dir := t.TempDir()
	db, err := OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenRegistry(ctx, db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	r.OnDeviceChange(func(id string) { changed = append(changed, id) })
	grants := []TopicGrant{{Filter: "tele/%c/#", Access: "publish"}}
	d, _, err := r.CreateDevice(ctx, NewDevice{ID: "t1", Type: "tasmota", Topics: grants})
	if err != nil || !reflect.DeepEqual(d.Topics, grants) {
		t.Fatalf("create: %+v %v", d.Topics, err)
	}
	if _, err := r.CreateDevices(ctx, []NewDevice{{ID: "ok"}, {ID: "bad", Topics: []TopicGrant{{Filter: "#", Access: "all"}}}}); err == nil ||
		!strings.Contains(err.Error(), "devices[1].topics[0].filter") {
		t.Errorf("bulk with a bad grant: %v", err)
	}
	if _, err := r.Device(ctx, "ok"); !errors.Is(err, ErrNotFound) {
		t.Error("bulk with a bad grant registered the others")
	}
	if _, err := r.UpdateDevice(ctx, "t1", DevicePatch{Topics: &[]TopicGrant{{Filter: "devices/t2/telemetry", Access: "publish"}}}); err == nil {
		t.Error("a grant on another device's topic accepted")
	}
	if len(changed) != 0 {
		t.Errorf("refused changes announced: %v", changed)
	}
	name := "renamed"
	if _, err := r.UpdateDevice(ctx, "t1", DevicePatch{Name: &name}); err != nil || len(changed) != 0 {
		t.Errorf("a rename announced as an access change: %v %v", changed, err)
	}
	now := []TopicGrant{{Filter: "stat/%c/#", Access: "all"}}
	if d, err = r.UpdateDevice(ctx, "t1", DevicePatch{Topics: &now}); err != nil || !reflect.DeepEqual(d.Topics, now) {
		t.Fatalf("patch: %+v %v", d.Topics, err)
	}
	if !reflect.DeepEqual(changed, []string{"t1"}) {
		t.Errorf("changes announced: %v", changed)
	}
	if typ, gs, ok := r.DeviceAccess("t1"); !ok || typ != "tasmota" || !reflect.DeepEqual(gs, now) {
		t.Errorf("DeviceAccess: %q %v %v", typ, gs, ok)
	}
	r.Close()
	db.Close()

	db, err = OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err = OpenRegistry(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if d, err := r.Device(ctx, "t1"); err != nil || !reflect.DeepEqual(d.Topics, now) {
		t.Errorf("after reopen: %+v %v", d.Topics, err)
	}
	if _, gs, _ := r.DeviceAccess("t1"); !reflect.DeepEqual(gs, now) {
		t.Errorf("cache after reopen: %v", gs)
	}
}

// A grant is checked again with the device's id in place of %c: %c/#
// is devices/# for a device whose id is "devices".
func TestGrantForDevice(t *testing.T) {
	for _, tt := range []struct {
		id, filter, access string
		ok                 bool
	}{
		{"esp-1", "%c/#", "all", true},
		{"devices", "%c/#", "all", false},
		{"devices", "%c/#", "subscribe", false},
		{"devices", "%c/+/telemetry", "publish", false},
		{"devices", "%c/%c/#", "subscribe", true}, // devices/devices/#: its own
		{"devices", "%c/%c/commands/#", "publish", false},
		{"devices", "%c/%c/status", "publish", false},
		{"devices", "%c/%c/telemetry", "publish", true},
		{"devices", "x%c/#", "all", true},
		{"devices", "tele/%c/#", "all", true},
	} {
		g := TopicGrant{Filter: tt.filter, Access: tt.access}
		if err := checkGrant("topics[0]", g); err != nil {
			t.Fatalf("%q: shape refused: %v", tt.filter, err)
		}
		_, err := g.For(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("device %q, %s %q: err %v, want ok=%v", tt.id, tt.access, tt.filter, err, tt.ok)
		}
		err = checkGrants("topics", tt.id, []TopicGrant{g})
		if (err == nil) != tt.ok {
			t.Errorf("checkGrants: device %q, %q: err %v, want ok=%v", tt.id, tt.filter, err, tt.ok)
		}
		var ie *InvalidError
		if err != nil && !errors.As(err, &ie) {
			t.Errorf("%q: %T is not an *InvalidError", tt.filter, err)
		}
	}
}
