package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestPostgresTwoNodes: two `tether serve` processes, each with its own
// data directory, share one PostgreSQL database (--postgres). A device
// registered through node A's API logs in over MQTT on node B; a user
// created on A logs in on B, over HTTP and MQTT; a device deleted on A is
// disconnected from B and refused at its next login there; a wrong
// secret is refused. Telemetry published on B is history on A, a twin
// set on A reads the same on B. When the database stops, /readyz says
// so; when it is back, B is ready again and hears A's changes again.
func TestPostgresTwoNodes(t *testing.T) {
	pg := testpg.New(t)
	url := pg.NewDatabase(t)
	bin := tetherBinary(t)
	nodes := make([]*tetherProc, 2)
	for i := range nodes {
		nodes[i] = newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+accessAdminPassword)
		nodes[i].args = []string{"--allow-anonymous=false", "--postgres", url}
		nodes[i].start(t) // one after the other: A creates the schema and admin
	}
	a, b := nodes[0], nodes[1]
	adminA := accessLogin(t, a, "admin", accessAdminPassword)

	secret := accessDevice(t, a, adminA, "pg-dev-1")
	if code := connect3Code(t, b.mqtt, "pg-dev-1", "pg-dev-1", secret, true, nil); code != 0 {
		t.Fatalf("device registered on A: CONNACK %d on B", code)
	}
	if code := connect3Code(t, b.mqtt, "pg-dev-1", "pg-dev-1", secret+"x", true, nil); code == 0 {
		t.Fatal("a wrong secret was accepted on B")
	}

	pw := accessUser(t, a, adminA, "pg-operator", "operator")
	if tok := accessLogin(t, b, "pg-operator", pw); tok == "" {
		t.Fatal("user created on A: no token from B")
	}
	if code := connect3Code(t, b.mqtt, "pg-op-client", "pg-operator", pw, true, nil); code != 0 {
		t.Fatalf("user created on A: MQTT CONNACK %d on B", code)
	}

	// Telemetry published on B is history and last values on A; a twin
	// set through A reads the same on B.
	dev := mustMQ(t, b.mqtt, mqOpts{id: "pg-dev-1", user: "pg-dev-1", pass: secret})
	if code := dev.pub(t, "devices/pg-dev-1/telemetry", `{"temp":21.5}`); code >= 0x80 {
		t.Fatalf("telemetry on B: PUBACK 0x%02x", code)
	}
	checkFor(t, 20*time.Second, func() error {
		var out struct{ Points []devices.Point }
		if code := accessAPI(t, a, "GET", "/devices/pg-dev-1/telemetry", adminA, nil, &out); code != 200 {
			return fmt.Errorf("HTTP %d", code)
		}
		if len(out.Points) != 1 || out.Points[0].Values["temp"] != 21.5 {
			return fmt.Errorf("history on A: %+v", out.Points)
		}
		var d devices.Device
		if code := accessAPI(t, a, "GET", "/devices/pg-dev-1", adminA, nil, &d); code != 200 || !d.Online || d.LastValues["temp"] != 21.5 {
			return fmt.Errorf("device on A: HTTP %d %+v", code, d)
		}
		return nil
	})
	if code := accessAPI(t, a, "PATCH", "/devices/pg-dev-1/twin", adminA, map[string]any{"desired": map[string]any{"rate": 5}}, nil); code != 200 {
		t.Fatalf("twin on A: HTTP %d", code)
	}
	var tw devices.Twin
	if code := accessAPI(t, b, "GET", "/devices/pg-dev-1/twin", accessLogin(t, b, "admin", accessAdminPassword), nil, &tw); code != 200 || tw.Desired["rate"] != 5.0 || tw.DesiredVersion != 1 {
		t.Fatalf("twin on B: HTTP %d %+v", code, tw)
	}

	// Connected to B, deleted through A: B closes its connection.
	if code := accessAPI(t, a, "DELETE", "/devices/pg-dev-1", adminA, nil, nil); code != 204 && code != 200 {
		t.Fatalf("delete on A: HTTP %d", code)
	}
	select {
	case <-dev.c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("device deleted on A still connected to B after 10s")
	}
	if code := connect3Code(t, b.mqtt, "pg-dev-1", "pg-dev-1", secret, true, nil); code == 0 {
		t.Fatal("a device deleted on A still logs in on B")
	}
	// Node B's own data directory holds no registry: only sessions.db.
	if fileExists(b.dbPath()) {
		t.Errorf("node B created %s beside PostgreSQL", b.dbPath())
	}

	// The database goes away: /readyz says so, and the process stays up.
	if err := pg.Pause(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		resp, err := http.Get("http://" + b.http + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "PostgreSQL") {
			return fmt.Errorf("/readyz: %d %s", resp.StatusCode, body)
		}
		return nil
	})
	if !b.running() {
		t.Fatalf("node B exited when PostgreSQL stopped\n%s", b.log())
	}

	// It comes back: B is ready again, and hears A's changes again (its
	// notifications reconnect): a device deleted through A is
	// disconnected from B.
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		resp, err := http.Get("http://" + b.http + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d", resp.StatusCode)
		}
		return nil
	})
	adminA = accessLogin(t, a, "admin", accessAdminPassword)
	secret2 := accessDevice(t, a, adminA, "pg-dev-2")
	dev2 := mustMQ(t, b.mqtt, mqOpts{id: "pg-dev-2", user: "pg-dev-2", pass: secret2})
	// B's notifications may not be back yet: then B learns of the delete
	// when they are (it reads the identities again and compares).
	if code := accessAPI(t, a, "DELETE", "/devices/pg-dev-2", adminA, nil, nil); code != 204 && code != 200 {
		t.Fatalf("delete on A after the outage: HTTP %d", code)
	}
	select {
	case <-dev2.c.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("after the outage, a device deleted on A is still connected to B")
	}
}
