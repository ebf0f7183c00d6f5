package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRulesReloadOnSIGHUP: auth.rules and telemetry.topics from the
// configuration file apply at start-up, a device's grants and Tasmota's
// nested SENSOR payload work, and after the file changes SIGHUP applies
// the new rules to the connections already open, dropping none; a file
// that does not validate changes nothing.
func TestRulesReloadOnSIGHUP(t *testing.T) {
	p := newTetherProc(t, tetherBinary(t), "TETHER_ADMIN_PASSWORD="+accessAdminPassword)
	file := filepath.Join(p.dir, "tether.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const maps = "telemetry:\n  topics:\n    - {filter: \"tele/+/SENSOR\", device_from: 1}\n"
	write("auth:\n  rules:\n    - {effect: deny, access: subscribe, topic: \"test/nosubscribe\"}\n" + maps)
	p.args = []string{"--allow-anonymous=false", "--log-level", "info", "-c", file}
	p.start(t)
	admin := accessLogin(t, p, "admin", accessAdminPassword)
	var d struct{ Secret string }
	body := map[string]any{"id": "tas-1", "type": "tasmota", "topics": []map[string]string{{"filter": "tele/%c/#", "access": "publish"}}}
	if code := accessAPI(t, p, "POST", "/devices", admin, body, &d); code != 201 {
		t.Fatalf("register: HTTP %d", code)
	}

	op := mustMQ(t, p.mqtt, mqOpts{id: "admin-1", user: "admin", pass: accessAdminPassword})
	dev := mustMQ(t, p.mqtt, mqOpts{id: "tas-1", user: "tas-1", pass: d.Secret})
	if code := op.sub(t, "test/nosubscribe"); code != 0x87 {
		t.Errorf("subscribe under a deny rule: SUBACK %#x, want 0x87", code)
	}
	if code := dev.pub(t, "tele/tas-1/SENSOR", `{"Time":"2026-11-30T12:00:00","AM2301":{"Temperature":22.1}}`); code != 0 {
		t.Errorf("granted publish: PUBACK %#x", code)
	}
	if code := dev.pub(t, "tele/tas-2/SENSOR", `{"x":1}`); code != 0x87 {
		t.Errorf("publish on another device's topic: PUBACK %#x, want 0x87", code)
	}
	checkFor(t, 10*time.Second, func() error {
		var got struct {
			LastValues map[string]any `json:"last_values"`
		}
		accessAPI(t, p, "GET", "/devices/tas-1", admin, nil, &got)
		if got.LastValues["AM2301.Temperature"] != 22.1 {
			return fmt.Errorf("last values %v", got.LastValues)
		}
		return nil
	})

	hup := func(want string) {
		t.Helper()
		before := strings.Count(p.log(), want)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, func() error {
			if strings.Count(p.log(), want) == before {
				return fmt.Errorf("no %q in the log yet", want)
			}
			return nil
		})
	}
	write("auth:\n  rules:\n    - {effect: deny, access: publish, topic: \"tele/#\", who: \"type:tasmota\"}\n" + maps)
	hup("auth.rules and telemetry.topics reloaded")
	if code := op.sub(t, "test/nosubscribe"); code != 0 && code != 1 {
		t.Errorf("subscribe after the deny rule went: SUBACK %#x", code)
	}
	if code := dev.pub(t, "tele/tas-1/SENSOR", `{"x":1}`); code != 0x87 {
		t.Errorf("publish under the new deny rule: PUBACK %#x, want 0x87", code)
	}

	write("auth:\n  rules:\n    - {effect: permit, access: publish, topic: \"tele/#\"}\n")
	hup("configuration not reloaded")
	if !strings.Contains(p.log(), "auth.rules[0].effect") {
		t.Errorf("the refused reload does not name the field:\n%s", p.log())
	}
	if code := dev.pub(t, "tele/tas-1/SENSOR", `{"x":1}`); code != 0x87 {
		t.Errorf("the rules in force changed after a bad reload: PUBACK %#x", code)
	}
	// Both clients are still connected: they were used above, and
	// nothing was disconnected.
	for _, m := range []*mq{op, dev} {
		select {
		case <-m.c.Done():
			t.Error("a client was disconnected by a reload")
		default:
		}
	}
	// Both reloads are in the audit log, the refused one as refused.
	checkFor(t, 10*time.Second, func() error {
		var audit struct {
			Entries []struct{ Action, Detail string }
		}
		accessAPI(t, p, "GET", "/audit?action=rules_reloaded", admin, nil, &audit)
		var details []string
		for _, e := range audit.Entries {
			details = append(details, e.Detail)
		}
		if len(details) != 2 || !strings.Contains(strings.Join(details, ";"), "refused") {
			return fmt.Errorf("audit entries %v", details)
		}
		return nil
	})
	// The payload's number alone would also match a timestamp such as
	// "15:16:22.140Z", so the check looks for the payload's own text.
	for _, line := range strings.Split(p.log(), "\n") {
		if strings.Contains(line, d.Secret) || strings.Contains(line, "AM2301") || strings.Contains(line, "Temperature") {
			t.Errorf("the log holds a secret or a payload: %s", line)
		}
	}
	p.stop(t)
}
