package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/tether-iot/tether/devices"
)

// TestDevicesTopicsCLI: devices add|set --topic set a device's grants
// through the API; bad grants are refused before or by the server, and a
// viewer cannot change them.
func TestDevicesTopicsCLI(t *testing.T) {
	e := newCLIEnv(t)
	remote := []string{"--server", e.url, "--token", e.token}
	with := func(args ...string) []string { return append(append([]string{"devices"}, args...), remote...) }
	grants := func(id string) []devices.TopicGrant {
		d, err := e.reg.Device(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		return d.Topics
	}

	code, out, errs := tether(t, with("add", "tas-1", "--type", "tasmota", "--topic", "tele/%c/#:publish", "--topic", "cmnd/%c/#:subscribe")...)
	if code != 0 {
		t.Fatalf("add: %d %q %q", code, out, errs)
	}
	want := []devices.TopicGrant{{Filter: "tele/%c/#", Access: "publish"}, {Filter: "cmnd/%c/#", Access: "subscribe"}}
	if got := grants("tas-1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("grants after add: %v", got)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		errHas string
	}{
		{"no access", with("set", "tas-1", "--topic", "tele/%c/#"), 2, "FILTER:ACCESS"},
		{"bad access", with("set", "tas-1", "--topic", "tele/%c/#:write"), 2, "publish, subscribe, all"},
		{"another device", with("set", "tas-1", "--topic", "devices/other/telemetry:publish"), 2, "devices/%c/"},
		{"wildcard first", with("add", "x1", "--topic", "#:subscribe"), 2, "first level"},
		{"contradiction", with("set", "tas-1", "--topic", "a/b:all", "--no-topics"), 2, "contradict"},
		{"nothing", with("set", "tas-1"), 2, "nothing to change"},
		{"viewer", []string{"devices", "set", "tas-1", "--topic", "a/%c:all", "--server", e.url, "--token", e.view}, 1, "403"},
		{"missing", with("set", "nope", "--topic", "a/%c:all"), 1, "404"},
	} {
		code, out, errs := tether(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.errHas) {
			t.Errorf("%s: exit %d (want %d), stdout %q, stderr %q (want %q)", tc.name, code, tc.code, out, errs, tc.errHas)
		}
	}
	if got := grants("tas-1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("grants changed by refused calls: %v", got)
	}
	code, out, errs = tether(t, with("set", "tas-1", "--topic", "stat/%c/#:all", "--name", "Kitchen")...)
	if code != 0 || !strings.Contains(out, "stat/%c/#") || !strings.Contains(out, "Kitchen") {
		t.Fatalf("set: %d %q %q", code, out, errs)
	}
	if got := grants("tas-1"); !reflect.DeepEqual(got, []devices.TopicGrant{{Filter: "stat/%c/#", Access: "all"}}) {
		t.Fatalf("grants after set: %v", got)
	}
	if code, out, errs = tether(t, with("set", "tas-1", "--no-topics")...); code != 0 || len(grants("tas-1")) != 0 {
		t.Fatalf("set --no-topics: %d %q %q %v", code, out, errs, grants("tas-1"))
	}
	if d, _ := e.reg.Device(t.Context(), "tas-1"); d.Name != "Kitchen" || d.Type != "tasmota" {
		t.Errorf("set --no-topics changed other fields: %+v", d)
	}
}
