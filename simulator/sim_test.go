package simulator

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/testlog"
)

// testFleet is one deterministic profile: nothing fails or is ignored.
const testFleet = `
profiles:
  - name: probe
    interval: 50ms
    settings: {setpoint: 20}
    metrics:
      - {name: temperature, kind: random_walk, start: 20, step: 0.5, toward: setpoint, pull: 0.5}
      - {name: count, kind: counter, step: 1}
    commands:
      reboot_downtime: 50ms
      accept: [calibrate]
    will:
      topic: devices/{id}/will
      payload: '{"gone":"{id}"}'
`

// observer is an MQTT client that records what devices publish.
type observer struct {
	t      *testing.T
	client mqtt.Client
	mu     sync.Mutex // mu guards msgs
	msgs   map[string][][]byte
}

func newObserver(t *testing.T, addr string, filters ...string) *observer {
	t.Helper()
	o := &observer{t: t, msgs: map[string][][]byte{}}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("observer").
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			o.mu.Lock()
			o.msgs[m.Topic()] = append(o.msgs[m.Topic()], m.Payload())
			o.mu.Unlock()
		})
	o.client = mqtt.NewClient(opts)
	if tok := o.client.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("observer connect: %v", tok.Error())
	}
	t.Cleanup(func() { o.client.Disconnect(100) })
	for _, f := range filters {
		if tok := o.client.Subscribe(f, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("observer subscribe %s: %v", f, tok.Error())
		}
	}
	return o
}

// last returns the newest message on topic decoded into a map, or nil.
func (o *observer) last(topic string) map[string]any {
	o.mu.Lock()
	defer o.mu.Unlock()
	ms := o.msgs[topic]
	if len(ms) == 0 {
		return nil
	}
	var v map[string]any
	if err := json.Unmarshal(ms[len(ms)-1], &v); err != nil {
		o.t.Errorf("%s: %q is not a JSON object", topic, ms[len(ms)-1])
	}
	return v
}

// anyWith reports whether some message on topic has key equal to want.
func (o *observer) anyWith(topic, key string, want any) bool {
	o.mu.Lock()
	ms := append([][]byte(nil), o.msgs[topic]...)
	o.mu.Unlock()
	for _, m := range ms {
		var v map[string]any
		if json.Unmarshal(m, &v) == nil && v[key] == want {
			return true
		}
	}
	return false
}

func (o *observer) publish(topic string, retain bool, payload string) {
	o.t.Helper()
	if tok := o.client.Publish(topic, 1, retain, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		o.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// startSim runs RunSim in the background; stop ends it and returns the
// summary.
func startSim(t *testing.T, cfg SimConfig) (stop func() Summary) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var sum Summary
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sum, err = RunSim(ctx, cfg, nil)
	}()
	var once sync.Once
	stop = func() Summary {
		once.Do(func() {
			cancel()
			<-done
			if err != nil {
				t.Errorf("RunSim: %v", err)
			}
		})
		return sum
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestSimDevicesOverTCP(t *testing.T) {
	b := startBroker(t)
	credsFile := filepath.Join(t.TempDir(), "creds.jsonl")
	if err := os.WriteFile(credsFile, []byte("{\"id\":\"d1\",\"secret\":\"s1\"}\n{\"id\":\"d2\",\"secret\":\"s2\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := LoadCredentials(credsFile)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := ParseFleet(strings.NewReader(testFleet))
	if err != nil {
		t.Fatal(err)
	}
	obs := newObserver(t, b.tcp, "devices/+/telemetry", "devices/+/responses/+", "devices/+/twin/reported")
	ep, _ := ParseEndpoint(b.tcp, "", "")
	stop := startSim(t, SimConfig{Endpoint: ep, Fleet: fleet, Credentials: creds, QoS: 1, Seed: 1})

	for _, id := range []string{"d1", "d2"} {
		waitFor(t, 10*time.Second, id+" telemetry", func() bool {
			v := obs.last("devices/" + id + "/telemetry")
			return v != nil && v["temperature"] != nil && v["count"] != nil && v["ts"] != nil
		})
		waitFor(t, 5*time.Second, id+" initial reported twin", func() bool {
			return obs.anyWith("devices/"+id+"/twin/reported", "setpoint", 20.0)
		})
	}

	// Commands: each is answered on responses/{cmdId}.
	for _, c := range []struct{ name, id, params, status string }{
		{"set", "c1", `{"setpoint":25}`, "ok"},
		{"ping", "c2", `{}`, "ok"},
		{"calibrate", "c3", `{}`, "ok"},
		{"self-destruct", "c4", `{}`, "error"},
		{"set", "c5", `"not an object"`, "error"},
	} {
		obs.publish("devices/d1/commands/"+c.name, false, `{"id":"`+c.id+`","params":`+c.params+`,"ts":1}`)
		waitFor(t, 5*time.Second, "response to "+c.name, func() bool { return obs.last("devices/d1/responses/"+c.id) != nil })
		if got := obs.last("devices/d1/responses/" + c.id)["status"]; got != c.status {
			t.Errorf("command %s: status %v, want %s", c.name, got, c.status)
		}
	}
	waitFor(t, 5*time.Second, "set reported", func() bool { return obs.anyWith("devices/d1/twin/reported", "setpoint", 25.0) })

	// Desired twin: applied once per version and reported.
	obs.publish("devices/d2/twin/desired", true, `{"version":3,"setpoint":18,"mode":"cool"}`)
	waitFor(t, 5*time.Second, "desired twin followed", func() bool { return obs.anyWith("devices/d2/twin/reported", "mode", "cool") })

	// Reboot: answers, goes away and comes back as a new connection.
	before, ok := b.Clients.Get("d2")
	if !ok {
		t.Fatal("d2 is not connected")
	}
	obs.publish("devices/d2/commands/reboot", false, `{"id":"r1","params":{},"ts":1}`)
	waitFor(t, 5*time.Second, "reboot answered", func() bool { return obs.last("devices/d2/responses/r1") != nil })
	waitFor(t, 10*time.Second, "d2 back online", func() bool {
		cl, ok := b.Clients.Get("d2")
		return ok && cl != before && !cl.Closed()
	})

	sum := stop()
	if sum.Devices != 2 || sum.Published == 0 || sum.PublishErrors != 0 || sum.CommandsReceived != 6 ||
		sum.CommandsAnswered != 4 || sum.CommandsFailed != 2 || sum.TwinUpdates != 1 || sum.Reboots != 1 || sum.Connects < 3 {
		line, _ := json.Marshal(sum)
		t.Fatalf("summary: %s", line)
	}
}

func TestSimOverWebSocketWithChurnAndWill(t *testing.T) {
	b := startBroker(t)
	fleet, err := ParseFleet(strings.NewReader(testFleet))
	if err != nil {
		t.Fatal(err)
	}
	obs := newObserver(t, b.tcp, "devices/+/telemetry", "devices/+/will")
	ep, err := ParseEndpoint("ws://"+b.ws, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var progress testlog.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan Summary)
	go func() {
		sum, err := RunSim(ctx, SimConfig{
			Endpoint: ep, Fleet: fleet, Devices: 3, Prefix: "ws-",
			Churn: 60, ChurnDowntime: 50 * time.Millisecond, // about one drop per device per second
			Progress: 100 * time.Millisecond, Seed: 2,
		}, &progress)
		if err != nil {
			t.Errorf("RunSim: %v", err)
		}
		done <- sum
	}()
	waitFor(t, 10*time.Second, "telemetry over WebSocket", func() bool { return obs.last("devices/ws-00003/telemetry") != nil })
	waitFor(t, 15*time.Second, "a will after churn", func() bool {
		for _, id := range []string{"ws-00001", "ws-00002", "ws-00003"} {
			if v := obs.last("devices/" + id + "/will"); v != nil && v["gone"] == id {
				return true
			}
		}
		return false
	})
	waitFor(t, 5*time.Second, "a progress line", func() bool { return strings.Contains(progress.String(), "connected") })
	cancel()
	sum := <-done
	if sum.Transport != TransportWS || sum.Churned == 0 || sum.Published == 0 {
		t.Fatalf("summary: %+v", sum)
	}
}
