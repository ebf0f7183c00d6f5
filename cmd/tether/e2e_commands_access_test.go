package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestAccessCommandsRecorded: everything an operator publishes on a
// device's command topics is a command the broker records, or refused
// (PUBACK 0x99 payload format invalid, 0x90 topic name invalid): a
// command the broker could not record (not JSON, a field out of range, a
// topic that is not devices/{id}/commands/{name}) went to the device as
// published, retained if asked, with no trace in the command history
// (SPEC §7: recorded whoever sends it); and a command reusing an open
// command's id was taken for it (its answer closed the other command).
func TestAccessCommandsRecorded(t *testing.T) {
	p, admin := accessServer(t)
	secret := accessDevice(t, p, admin, "dev-c")
	opPW := accessUser(t, p, admin, "olga", "operator")

	dev := mustMQ(t, p.mqtt, mqOpts{id: "dev-c", user: "dev-c", pass: secret})
	dev.sub(t, "devices/dev-c/commands/#")
	op := mustMQ(t, p.mqtt, mqOpts{id: "olga-1", user: "olga", pass: opPW})
	open := accessCommand(t, p, admin, "dev-c", "set-rate", `{"rate":5}`)
	dev.waitFor(t, contains(open), nil)

	for _, tc := range []struct {
		name, topic, payload string
		code                 byte
	}{
		{"not JSON", "devices/dev-c/commands/wipe", "wipe now", 0x99},
		{"params not an object", "devices/dev-c/commands/wipe", `{"params":[1]}`, 0x99},
		{"timeout beyond 24 h", "devices/dev-c/commands/wipe", `{"params":{},"timeout":100000}`, 0x99},
		{"name too long", "devices/dev-c/commands/" + strings.Repeat("w", 65), `{"params":{}}`, 0x90},
		{"no name", "devices/dev-c/commands", `{"params":{}}`, 0x90},
		{"name of two levels", "devices/dev-c/commands/wipe/now", `{"params":{}}`, 0x90},
	} {
		if code := op.retain(t, tc.topic, tc.payload); code != tc.code {
			t.Errorf("%s: PUBACK 0x%02x, want 0x%02x", tc.name, code, tc.code)
		}
	}
	// Another command's id, open: recorded under an id of its own.
	if code := op.retain(t, "devices/dev-c/commands/wipe", `{"id":"`+open+`","params":{"all":true},"ts":1}`); code != 0 {
		t.Fatalf("a command reusing an open id: PUBACK 0x%02x", code)
	}
	got := dev.waitFor(t, contains(`"all":true`), func(m message) bool {
		return !strings.Contains(m.payload, `"id":"cmd-`) || m.retain || strings.Contains(m.payload, "wipe now")
	})
	if strings.Contains(got.payload, open) {
		t.Fatalf("the device got a command carrying the open command %s's id: %s", open, got.payload)
	}
	var list struct {
		Commands []struct{ ID, Name string }
	}
	checkFor(t, 10*time.Second, func() error {
		if code := accessAPI(t, p, "GET", "/devices/dev-c/commands", admin, nil, &list); code != 200 {
			t.Fatalf("GET commands: HTTP %d", code)
		}
		if len(list.Commands) != 2 {
			return fmt.Errorf("history %+v, want set-rate and wipe", list.Commands)
		}
		return nil
	})

	// Nothing was retained on the device's command topics.
	look := mustMQ(t, p.mqtt, mqOpts{id: "look", user: "admin", pass: accessAdminPassword})
	look.sub(t, "devices/dev-c/commands/#")
	look.pub(t, "devices/dev-c/commands/barrier", `{"params":{}}`)
	look.waitFor(t, onTopic("devices/dev-c/commands/barrier"), func(m message) bool { return m.retain })
}
