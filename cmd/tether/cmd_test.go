package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/dashboard"
	"github.com/tether-iot/tether/devices"
)

// cmdEnv is a registry with the real access hook, the device data stores
// wired as serve wires them, a broker and the API over HTTP.
type cmdEnv struct {
	url, mqttAddr  string
	reg            *devices.Registry
	data           *deviceData
	operator, view string // API tokens
}

func newCmdEnv(t *testing.T) *cmdEnv {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := configs.Default()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr, cfg.HTTP.Addr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off, configs.Off
	cfg.Telemetry.FlushInterval = 20 * time.Millisecond
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &cmdEnv{}
	if e.reg, err = devices.OpenRegistry(ctx, db, log); err != nil {
		t.Fatal(err)
	}
	if e.data, err = openDeviceData(cfg, db, e.reg, log); err != nil {
		t.Fatal(err)
	}
	auth := broker.NewAuth(broker.AuthOptions{Registry: e.reg, Logger: log})
	bo := brokerOptions(cfg)
	bo.Logger, bo.Access, bo.Hooks = log, auth, e.data.hooks()
	b, err := broker.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	e.data.attach(b.Server)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	e.mqttAddr = b.TCP.Address()
	api, err := dashboard.NewAPI(dashboard.APIOptions{Registry: e.reg, Logger: log,
		Telemetry: e.data.telemetry, Commands: e.data.commandHook, Twins: e.data.twinHook})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dashboard.NewHandler(dashboard.Options{API: api, Logger: log}))
	e.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		_ = e.data.close()
		_ = e.reg.Close()
		_ = db.Close()
	})
	for _, u := range []string{"operator", "viewer"} {
		if _, err := e.reg.CreateUser(ctx, u, u+"-password-1", u); err != nil {
			t.Fatal(err)
		}
	}
	if e.operator, _, err = e.reg.CreateToken(ctx, "operator", "cli", 0); err != nil {
		t.Fatal(err)
	}
	if e.view, _, err = e.reg.CreateToken(ctx, "viewer", "cli", 0); err != nil {
		t.Fatal(err)
	}
	return e
}

// device registers id and connects it with its secret; it answers each
// command with answer ("ok", "error", or "" for silence).
func (e *cmdEnv) device(t *testing.T, id, answer string) {
	t.Helper()
	_, secret, err := e.reg.CreateDevice(context.Background(), devices.NewDevice{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	var c paho3.Client
	c = paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqttAddr).SetClientID(id).
		SetUsername(id).SetPassword(secret).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("devices/"+id+"/commands/#", 1, func(_ paho3.Client, m paho3.Message) {
		if answer == "" {
			return
		}
		var cmd struct{ ID string }
		_ = json.Unmarshal(m.Payload(), &cmd)
		r := `{"status":"ok","result":{"rebooting":true}}`
		if answer == "error" {
			r = `{"status":"error","error":"flash busy"}`
		}
		go c.Publish("devices/"+id+"/responses/"+cmd.ID, 1, false, r)
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
}

func TestCmdSend(t *testing.T) {
	e := newCmdEnv(t)
	e.device(t, "pump-ok", "ok")
	e.device(t, "pump-err", "error")
	e.device(t, "pump-mute", "")
	if _, _, err := e.reg.CreateDevice(context.Background(), devices.NewDevice{ID: "pump-away"}); err != nil {
		t.Fatal(err)
	}
	remote := func(token string, args ...string) []string {
		return append(append([]string{"cmd", "send"}, args...), "--server", e.url, "--token", token)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		outHas []string
		errHas []string
	}{
		{"succeeded", remote(e.operator, "pump-ok", "reboot", "--params", `{"delay":1}`, "--wait", "5s"), 0, []string{"succeeded", `"rebooting":true`}, nil},
		{"succeeded by polling", remote(e.operator, "pump-ok", "reboot", "--timeout", "2m", "--wait", "5s"), 0, []string{"succeeded"}, nil},
		{"failed", remote(e.operator, "pump-err", "reboot", "--wait", "5s"), 1, []string{"failed", "flash busy"}, []string{"failed"}},
		{"expired", remote(e.operator, "pump-mute", "reboot", "--wait", "1s"), 1, []string{"expired"}, []string{"expired"}},
		{"no wait", remote(e.operator, "pump-mute", "reboot"), 0, []string{"pending"}, nil},
		{"json", remote(e.operator, "pump-ok", "ping", "--wait", "5s", "--json"), 0, []string{`"status": "succeeded"`, `"device_id": "pump-ok"`}, nil},
		{"no token", []string{"cmd", "send", "pump-ok", "ping", "--server", e.url}, 1, nil, []string{"401"}},
		{"viewer refused", remote(e.view, "pump-ok", "reboot"), 1, nil, []string{"403"}},
		{"unknown device", remote(e.operator, "ghost", "reboot"), 1, nil, []string{"404"}},
		{"bad params", remote(e.operator, "pump-ok", "reboot", "--params", "[1]"), 2, nil, []string{"JSON object"}},
		{"missing name", remote(e.operator, "pump-ok"), 2, nil, []string{"want 2 argument"}},
		{"no subcommand", []string{"cmd"}, 2, nil, []string{"Usage"}},
		{"help", []string{"cmd", "send", "--help"}, 0, []string{"--params", "--wait"}, nil},
		{"offline", remote(e.operator, "pump-away", "reboot"), 0, []string{"pending", "pump-away is offline", "is queued"}, nil},
		{"offline json", remote(e.operator, "pump-away", "reboot", "--json"), 0, []string{`"status": "pending"`}, []string{"pump-away is offline"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := tether(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out, errs)
			}
			for _, s := range tc.outHas {
				if !strings.Contains(out, s) {
					t.Errorf("stdout %q lacks %q", out, s)
				}
			}
			for _, s := range tc.errHas {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr %q lacks %q", errs, s)
				}
			}
		})
	}
}

// TestCommandFromOperatorOverMQTT: with the real access hook, an operator
// publishing on devices/{id}/commands/{name} is recorded like the API.
func TestCommandFromOperatorOverMQTT(t *testing.T) {
	e := newCmdEnv(t)
	e.device(t, "pump-1", "ok")
	op := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqttAddr).SetClientID("operator-console").
		SetUsername("operator").SetPassword("operator-password-1").SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := op.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect operator: %v", tok.Error())
	}
	defer op.Disconnect(0)
	if tok := op.Publish("devices/pump-1/commands/reboot", 1, false, `{"id":"console-1","params":{}}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	checkFor(t, 5*time.Second, func() error {
		if _, ok := e.data.commands.OpenFor("console-1"); ok {
			return nil
		}
		if c, err := e.data.commands.Get(ctx, "console-1"); err == nil && c.Done() {
			return nil
		}
		return errors.New("command not recorded")
	})
	got, err := e.data.commands.Wait(ctx, "console-1")
	if err != nil || got.Status != devices.StatusSucceeded || got.DeviceID != "pump-1" {
		t.Fatalf("%+v, %v", got, err)
	}
}
