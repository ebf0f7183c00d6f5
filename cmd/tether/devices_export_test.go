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

	o := paho3.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("meter-7").
		SetUsername("meter-7").SetPassword(dev.Secret).SetAutoReconnect(false)
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	for i := range 5 {
		if tok := c.Publish("devices/meter-7/telemetry", 1, false, fmt.Sprintf(`{"kwh":%d}`, i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	server := "http://" + a.httpAddr()
	var doc struct {
		Format    string         `json:"format"`
		Device    map[string]any `json:"device"`
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
		return nil
	})
	if doc.Format != "tether.device-export.v1" || doc.Device["name"] != "Meter 7" || doc.Telemetry[4].Values["kwh"] != 4 {
		t.Errorf("document: %+v", doc)
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
