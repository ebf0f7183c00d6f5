package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/devices"
)

// TestDevicesExportCLI exports a device of a running server whose
// telemetry arrived over MQTT, to stdout and to a file, and checks that a
// viewer is refused.
func TestDevicesExportCLI(t *testing.T) {
	a := startAuthApp(t)
	admin := login(t, a, "admin", simAdminPassword)
	var dev devices.DeviceSecret
	if code := admin.do(t, "POST", "/devices", map[string]any{"id": "meter-7", "name": "Meter 7"}, &dev); code != http.StatusCreated {
		t.Fatalf("register: %d", code)
	}
	if code := admin.do(t, "POST", "/users", map[string]string{"username": "vera", "password": "vera-password-1", "role": "viewer"}, nil); code != http.StatusCreated {
		t.Fatalf("create viewer: %d", code)
	}
	viewer := login(t, a, "vera", "vera-password-1")

	// The meter reports, then goes offline with a persistent session
	// that holds a command for it.
	o := paho3.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("meter-7").
		SetUsername("meter-7").SetPassword(dev.Secret).SetAutoReconnect(false).SetCleanSession(false)
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if tok := c.Subscribe("devices/meter-7/commands/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for i := range 5 {
		if tok := c.Publish("devices/meter-7/telemetry", 1, false, fmt.Sprintf(`{"kwh":%d}`, i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	c.Disconnect(100)
	// The command must find the session offline, or it is delivered.
	checkFor(t, 10*time.Second, func() error {
		var list struct {
			Sessions []struct {
				ClientID string `json:"client_id"`
				Online   bool   `json:"online"`
			} `json:"sessions"`
		}
		if code := admin.do(t, "GET", "/sessions", nil, &list); code != http.StatusOK {
			return fmt.Errorf("GET /sessions: %d", code)
		}
		for _, s := range list.Sessions {
			if s.ClientID == "meter-7" && !s.Online {
				return nil
			}
		}
		return fmt.Errorf("meter-7's session is not offline yet: %+v", list.Sessions)
	})
	if code := admin.do(t, "POST", "/devices/meter-7/commands", map[string]any{"name": "reset", "timeout": 600}, nil); code/100 != 2 {
		t.Fatalf("send command: %d", code)
	}
	server := "http://" + a.httpAddr()
	var doc struct {
		Format  string         `json:"format"`
		Device  map[string]any `json:"device"`
		Session *struct {
			ClientID   string `json:"client_id"`
			Online     bool   `json:"online"`
			Persistent bool   `json:"persistent"`
			Queued     int    `json:"queued"`
		} `json:"session"`
		Commands  []devices.Command    `json:"commands"`
		Audit     []devices.AuditEntry `json:"audit"`
		Telemetry []struct {
			Values map[string]float64 `json:"values"`
		} `json:"telemetry"`
	}
	checkFor(t, 10*time.Second, func() error {
		code, out, errs := tether(t, "devices", "export", "meter-7", "--server", server, "--token", admin.token)
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errs)
		}
		if strings.Contains(out, dev.Secret) {
			t.Fatal("the export shows the secret")
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return fmt.Errorf("decode %q: %v", out, err)
		}
		if len(doc.Telemetry) != 5 {
			return fmt.Errorf("%d points", len(doc.Telemetry))
		}
		if s := doc.Session; s == nil || s.Online || s.Queued != 1 {
			return fmt.Errorf("session %+v", doc.Session)
		}
		return nil
	})
	if doc.Format != "tether.device-export.v1" || doc.Device["name"] != "Meter 7" || doc.Telemetry[4].Values["kwh"] != 4 {
		t.Errorf("document: %+v", doc)
	}
	if s := doc.Session; s.ClientID != "meter-7" || !s.Persistent {
		t.Errorf("session %+v", s)
	}
	if len(doc.Commands) != 1 || doc.Commands[0].Name != "reset" {
		t.Errorf("commands %+v", doc.Commands)
	}
	exports := 0
	for _, e := range doc.Audit {
		if e.Action == devices.AuditDeviceExported && e.Target == "meter-7" && e.Actor == "admin" {
			exports++
		}
	}
	if exports == 0 {
		t.Errorf("the audit entries hold no export: %+v", doc.Audit)
	}

	file := filepath.Join(t.TempDir(), "meter-7.json")
	if code, _, errs := tether(t, "devices", "export", "meter-7", "--out", file, "--server", server, "--token", admin.token); code != 0 {
		t.Fatalf("--out: exit %d: %s", code, errs)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v %v", fi, err)
	}
	b, _ := os.ReadFile(file)
	if !json.Valid(b) {
		t.Fatalf("--out file is not JSON: %.200s", b)
	}

	code, out, errs := tether(t, "devices", "export", "meter-7", "--out", file+".viewer", "--server", server, "--token", viewer.token)
	if code != 1 || !strings.Contains(errs, "403") || out != "" {
		t.Errorf("viewer: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, err := os.Stat(file + ".viewer"); !os.IsNotExist(err) {
		t.Errorf("a refused export left a file: %v", err)
	}
}
