package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testlog"
)

// telEnv is a broker with the access hook and the telemetry history on
// one registry database.
type telEnv struct {
	*authEnv
	tel  *devices.Telemetry
	hook *TelemetryHook
	log  *testlog.Buffer
}

func startTelEnv(t *testing.T, maps []TelemetryTopic, rs ...rules.Rule) *telEnv {
	t.Helper()
	ctx := context.Background()
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, authLogger())
	if err != nil {
		t.Fatal(err)
	}
	reg.SetPasswordCost(bcrypt.MinCost)
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{FlushInterval: 20 * time.Millisecond, Logger: authLogger(), LastValues: reg})
	if err != nil {
		t.Fatal(err)
	}
	buf := &testlog.Buffer{}
	hook := NewTelemetryHook(tel, slog.New(slog.NewTextHandler(buf, nil)))
	hook.SetTopics(maps)
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	auth := NewAuth(AuthOptions{Registry: reg, Logger: authLogger(), Rules: rs})
	hook.SetIdentify(auth.Identity)
	o.Logger, o.Access, o.Hooks = authLogger(), auth, []mqtt.Hook{hook}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		tel.Close()
		reg.Close()
		db.Close()
	})
	return &telEnv{authEnv: &authEnv{b: b, auth: auth, reg: reg, tcp: b.TCP.Address()}, tel: tel, hook: hook, log: buf}
}

// values returns the metrics of device id's stored points, merged.
func (e *telEnv) values(t *testing.T, id string) map[string]any {
	t.Helper()
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	pts, err := e.tel.Points(context.Background(), id, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for _, p := range pts {
		for k, v := range p.Values {
			out[k] = v
		}
	}
	return out
}

// TestTelemetryFromFirmware: Tasmota's nested SENSOR payload on its own
// topic, a bare number on devices/{id}/telemetry/{metric}, and a device
// that publishes on another device's mapped topic writes nothing of its
// history; rejections are logged once a minute per device, without the
// payload.
func TestTelemetryFromFirmware(t *testing.T) {
	e := startTelEnv(t, []TelemetryTopic{
		{Filter: "tele/+/SENSOR", DeviceFrom: "1"},
		{Filter: "shellies/+/sensor/+", DeviceFrom: "1"},
		{Filter: "z2m/own", DeviceFrom: "%c"},
	}, rules.Rule{Effect: "allow", Access: "publish", Topic: "tele/+/SENSOR", Who: "type:tasmota"})
	ctx := context.Background()
	grants := []devices.TopicGrant{{Filter: "tele/%c/#", Access: "publish"}, {Filter: "shellies/%c/#", Access: "publish"}, {Filter: "z2m/own", Access: "publish"}}
	_, s1, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "t1", Type: "tasmota", Topics: grants})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "t2", Type: "tasmota"}); err != nil {
		t.Fatal(err)
	}
	admin := e.user(t, "root", devices.RoleAdmin)
	c := authMustClient(t, "tcp://"+e.tcp, "t1", "t1", s1)
	a := authMustClient(t, "tcp://"+e.tcp, "adm", "root", admin)

	waitToken(t, "sensor", c.Publish("tele/t1/SENSOR", 1, false, `{"Time":"2026-11-26T03:00:00","AM2301":{"Temperature":22.1,"Humidity":45}}`))
	waitToken(t, "bare", c.Publish("devices/t1/telemetry/rssi", 1, false, "-67"))
	waitToken(t, "shelly", c.Publish("shellies/t1/sensor/temperature", 1, false, "21.5"))
	waitToken(t, "z2m", c.Publish("z2m/own", 1, false, `{"linkquality":120}`))
	// Bad payloads: three from t1, logged once (and nothing more of t1
	// this minute).
	for i := range 3 {
		waitToken(t, "bad", c.Publish("tele/t1/SENSOR", 1, false, fmt.Sprintf(`{"SECRETPAYLOAD":[%d]}`, i)))
	}
	// Another device's history, through a rule that lets t1 publish
	// there, and an admin's publish on a mapped topic: routed, not stored.
	waitToken(t, "forged", c.Publish("tele/t2/SENSOR", 1, false, `{"AM2301":{"Temperature":48151623}}`))
	waitToken(t, "admin", a.Publish("tele/t2/SENSOR", 1, false, `{"AM2301":{"Temperature":98}}`))
	waitToken(t, "bad bare", c.Publish("devices/t1/telemetry/rssi", 1, false, "SECRETPAYLOAD"))

	var got map[string]any
	checkFor(t, 5*time.Second, func() error {
		got = e.values(t, "t1")
		if len(got) < 5 {
			return fmt.Errorf("t1's history: %v", got)
		}
		return nil
	})
	want := map[string]any{"Time": "2026-11-26T03:00:00", "AM2301.Temperature": 22.1, "AM2301.Humidity": 45.0,
		"rssi": -67.0, "temperature": 21.5, "linkquality": 120.0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("t1 %s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if v := e.values(t, "t2"); len(v) != 0 {
		t.Errorf("t2's history written by others: %v", v)
	}
	logs := e.log.String()
	if strings.Contains(logs, "SECRETPAYLOAD") || strings.Contains(logs, "48151623") {
		t.Errorf("payload in the log:\n%s", logs)
	}
	if n := strings.Count(logs, "client=t1 "); n != 1 {
		t.Errorf("t1's rejections logged %d times, want once a minute:\n%s", n, logs)
	}
	for _, want := range []string{"reason=bad_value", "device=t2 client=adm", "reason=not_own"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}
