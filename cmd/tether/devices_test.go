package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/tether-iot/tether/devices"
)

func TestDevicesCLI(t *testing.T) {
	e := newCLIEnv(t)
	remote := []string{"--server", e.url, "--token", e.token}
	with := func(args ...string) []string { return append(append([]string{"devices"}, args...), remote...) }

	// add prints the secret once.
	code, out, errs := tether(t, with("add", "pump-1", "--name", "Pump 1", "--type", "pump", "--label", "site=north", "--label", "floor=2")...)
	if code != 0 || !strings.Contains(out, "device pump-1 registered") || !strings.Contains(out, "secret: ") {
		t.Fatalf("add: %d %q %q", code, out, errs)
	}
	secret := strings.TrimSpace(strings.SplitN(strings.SplitN(out, "secret: ", 2)[1], "\n", 2)[0])
	if _, err := e.reg.Authenticate(t.Context(), "pump-1", secret); err != nil {
		t.Fatalf("printed secret does not authenticate: %v", err)
	}
	// add --json gives the API's object with the secret.
	code, out, _ = tether(t, with("add", "--json", "--type", "valve")...)
	var added devices.DeviceSecret
	if code != 0 || json.Unmarshal([]byte(out), &added) != nil || added.ID == "" || added.Secret == "" || added.Type != "valve" {
		t.Fatalf("add --json: %d %q", code, out)
	}

	tests := []struct {
		name    string
		args    []string
		code    int
		outHas  []string
		errHas  []string
		outNone []string
	}{
		{"list table", with("list"), 0, []string{"ID", "NAME", "pump-1", "Pump 1", "site=north", added.ID}, nil, []string{secret}},
		{"list filter", with("list", "--type", "valve"), 0, []string{added.ID}, nil, []string{"pump-1"}},
		{"list json", with("list", "--json"), 0, []string{`"devices"`, `"next_cursor"`, `"pump-1"`}, nil, []string{secret}},
		{"show", with("show", "pump-1"), 0, []string{"id:", "pump-1", "labels:", "north"}, nil, []string{secret, "secret"}},
		{"show json", with("show", "pump-1", "--json"), 0, []string{`"id": "pump-1"`}, nil, []string{secret}},
		{"show missing", with("show", "nope"), 1, nil, []string{"404 not_found"}, nil},
		{"show bad id", with("show", "a/b"), 1, nil, []string{"404"}, nil},
		{"show no id", with("show"), 2, nil, []string{"want 1 argument"}, nil},
		{"add duplicate", with("add", "pump-1"), 1, nil, []string{"409 conflict"}, nil},
		{"add user name", with("add", "admin"), 1, nil, []string{"409 conflict"}, nil},
		{"add bad id", with("add", "a+b"), 1, nil, []string{"400 invalid"}, nil},
		{"add bad label", with("add", "x", "--label", "nolabel"), 2, nil, []string{"KEY=VALUE"}, nil},
		{"unknown subcommand", with("frobnicate"), 2, nil, []string{"unknown command"}, nil},
		{"help", []string{"devices", "--help"}, 0, []string{"list", "rotate"}, nil, nil},
		{"list help", []string{"devices", "list", "--help"}, 0, []string{"-status", "-server"}, nil, nil},
		{"no token", []string{"devices", "list", "--server", e.url}, 1, nil, []string{"401", "TETHER_TOKEN"}, nil},
		{"viewer cannot rm", []string{"devices", "rm", "pump-1", "--server", e.url, "--token", e.view}, 1, nil, []string{"403 forbidden"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := tether(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, out, errs)
			}
			for _, s := range tc.outHas {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.errHas {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errs)
				}
			}
			for _, s := range tc.outNone {
				if strings.Contains(out, s) {
					t.Errorf("stdout has %q:\n%s", s, out)
				}
			}
		})
	}

	// rotate prints a new secret; the old one stops working.
	code, out, errs = tether(t, with("rotate", "pump-1")...)
	if code != 0 || !strings.Contains(out, "secret: ") || strings.Contains(out, secret) {
		t.Fatalf("rotate: %d %q %q", code, out, errs)
	}
	if _, err := e.reg.Authenticate(t.Context(), "pump-1", secret); err == nil {
		t.Fatal("the old secret still works")
	}
	// rm deletes, several at once.
	code, out, errs = tether(t, with("rm", "pump-1", added.ID)...)
	if code != 0 || !strings.Contains(out, "device pump-1 deleted") {
		t.Fatalf("rm: %d %q %q", code, out, errs)
	}
	code, out, _ = tether(t, with("list", "--json")...)
	var l deviceList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Devices) != 0 {
		t.Fatalf("after rm: %s", out)
	}
	if strings.Contains(e.logs.String(), secret) || strings.Contains(e.logs.String(), e.token) {
		t.Fatal("the server log holds a secret or the token")
	}
}

func TestDevicesListPagesAndEnv(t *testing.T) {
	e := newCLIEnv(t)
	var nds []map[string]string
	for i := 0; i < 25; i++ {
		nds = append(nds, map[string]string{"id": fmt.Sprintf("d%02d", i)})
	}
	c, err := newServerClient(e.url, e.token)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.do(t.Context(), "POST", "/devices/bulk", map[string]any{"devices": nds}, nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TETHER_SERVER", e.url)
	t.Setenv("TETHER_TOKEN", e.token)
	code, out, errs := tether(t, "devices", "list", "--limit", "10")
	if code != 0 || strings.Count(out, "\nd") != 10 || !strings.Contains(errs, "--cursor") {
		t.Fatalf("first page: %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = tether(t, "devices", "list", "--limit", "10", "--all", "--json")
	var l deviceList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Devices) != 25 || l.NextCursor != "" {
		t.Fatalf("--all: %d %d %q", code, len(l.Devices), errs)
	}
}
