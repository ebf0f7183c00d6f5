package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestClusterPostgresCommand: three real nodes on one PostgreSQL and one
// bus. A command sent through node A's API reaches the device connected
// to node C, its answer (published on C) completes the command on A, and
// an operator subscribed on node B sees the device's presence and
// telemetry. A desired twin state set through A reaches the device on C
// and the operator on B; the state the device reports on C reads the same
// through every node's API.
func TestClusterPostgresCommand(t *testing.T) {
	pg := testpg.New(t)
	url := pg.NewDatabase(t)
	bin := tetherBinary(t)
	routes := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	nodes := make([]*tetherProc, 3)
	for i := range nodes {
		nodes[i] = newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+accessAdminPassword,
			fmt.Sprintf("TETHER_CLUSTER_NODE=pg%d", i+1), "TETHER_CLUSTER_LISTEN="+routes[i],
			"TETHER_CLUSTER_PEERS="+strings.Join(routes, ","), "TETHER_CLUSTER_SECRET="+testClusterSecret)
		nodes[i].args = []string{"--allow-anonymous=false", "--postgres", url}
		nodes[i].start(t) // one after the other: the first creates the schema and admin
	}
	a, b, c := nodes[0], nodes[1], nodes[2] // the API, the operator, the device
	admin := accessLogin(t, a, "admin", accessAdminPassword)
	secret := accessDevice(t, a, admin, "cl-dev-1")
	pw := accessUser(t, a, admin, "cl-operator", "operator")

	op := mustMQ(t, b.mqtt, mqOpts{id: "cl-op", user: "cl-operator", pass: pw})
	op.sub(t, "devices/cl-dev-1/#")
	dev := mustMQ(t, c.mqtt, mqOpts{id: "cl-dev-1", user: "cl-dev-1", pass: secret})
	dev.sub(t, "devices/cl-dev-1/commands/#")
	// The device's status, published by node C, reaches the operator on B
	// (retained, it goes to every node, whatever their subscriptions).
	op.waitFor(t, func(m message) bool {
		return m.topic == "devices/cl-dev-1/status" && strings.Contains(m.payload, "online")
	}, nil)

	// A command sent through A reaches the device on C once C's
	// subscription has crossed to A: send until one arrives.
	var got message
	deadline := time.Now().Add(20 * time.Second)
	for got.topic == "" {
		accessCommand(t, a, admin, "cl-dev-1", "reboot", `{"delay":1}`)
		select {
		case got = <-dev.box:
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no command reached the device on C\nA:\n%s", a.log())
		}
	}
	var cmd struct{ ID string }
	if err := json.Unmarshal([]byte(got.payload), &cmd); err != nil || !strings.HasPrefix(got.topic, "devices/cl-dev-1/commands/reboot") {
		t.Fatalf("command on C: %+v (%v)", got, err)
	}
	if code := dev.pub(t, "devices/cl-dev-1/responses/"+cmd.ID, `{"status":"ok","result":{"rebooted":true}}`); code >= 0x80 {
		t.Fatalf("response on C: PUBACK 0x%02x", code)
	}
	checkFor(t, 20*time.Second, func() error {
		if s := accessCommandStatus(t, a, admin, cmd.ID); s != "succeeded" {
			return fmt.Errorf("command %s on A: %s", cmd.ID, s)
		}
		return nil
	})
	// Telemetry from C reaches the operator on B.
	dev.pub(t, "devices/cl-dev-1/telemetry", `{"temp":20.5}`)
	op.waitFor(t, onTopic("devices/cl-dev-1/telemetry"), nil)

	// A twin: desired set through A, published by A (retained, so it
	// crosses to every node) to the device on C and the operator on B.
	dev.sub(t, "devices/cl-dev-1/twin/desired")
	if code := accessAPI(t, a, "PATCH", "/devices/cl-dev-1/twin", admin, map[string]any{"desired": map[string]any{"rate": 5}}, nil); code != 200 {
		t.Fatalf("twin PATCH on A: HTTP %d", code)
	}
	desired := func(m message) bool {
		return m.topic == "devices/cl-dev-1/twin/desired" && strings.Contains(m.payload, `"rate":5`) && strings.Contains(m.payload, `"version":1`)
	}
	dev.waitFor(t, desired, nil)
	op.waitFor(t, desired, nil)
	// The device reports on C; every node's API reads the same twin.
	if code := dev.pub(t, "devices/cl-dev-1/twin/reported", `{"rate":5,"fw":"2.0"}`); code >= 0x80 {
		t.Fatalf("twin reported on C: PUBACK 0x%02x", code)
	}
	for _, n := range nodes {
		tok := accessLogin(t, n, "admin", accessAdminPassword)
		checkFor(t, 20*time.Second, func() error {
			var tw devices.Twin
			if code := accessAPI(t, n, "GET", "/devices/cl-dev-1/twin", tok, nil, &tw); code != 200 {
				return fmt.Errorf("HTTP %d", code)
			}
			if tw.Desired["rate"] != 5.0 || tw.DesiredVersion != 1 || tw.Reported["rate"] != 5.0 || tw.Reported["fw"] != "2.0" || len(tw.Delta) != 0 {
				return fmt.Errorf("twin on %s: %+v", n.http, tw)
			}
			return nil
		})
	}
}
