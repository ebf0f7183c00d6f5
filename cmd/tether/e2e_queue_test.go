package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// A persistent session's queue with a small configured bound
// (mqtt.max_queued_messages): what fits is delivered when the session
// returns; the overflow is refused, counted in /metrics and shown on
// GET /api/v1/sessions, which needs a logged-in user.
func TestQueueOverflowShown(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = "off", "off"
	cfg.MQTT.MaxQueuedMessages = 5
	a := startTestApp(t, cfg)

	var early payloadSet
	sub := crashSub3(t, a.mqttAddr(), "q-sub", &early)
	if tok := sub.Subscribe("q/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sub.Disconnect(100)

	anon := &apiSession{base: "http://" + a.httpAddr(), client: &http.Client{Timeout: 10 * time.Second}}
	if code := anon.do(t, "GET", "/sessions", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("GET /sessions without credentials: %d, want 401", code)
	}
	s := login(t, a, "admin", simAdminPassword)
	type session struct {
		ClientID  string     `json:"client_id"`
		Owner     string     `json:"owner"`
		Online    bool       `json:"online"`
		Queued    int        `json:"queued"`
		Dropped   int        `json:"dropped"`
		ExpiresAt *time.Time `json:"expires_at"`
	}
	find := func() session {
		var out struct {
			Sessions   []session `json:"sessions"`
			NextCursor string    `json:"next_cursor"`
		}
		if code := s.do(t, "GET", "/sessions?limit=10", nil, &out); code != http.StatusOK {
			t.Fatalf("GET /sessions: %d", code)
		}
		for _, se := range out.Sessions {
			if se.ClientID == "q-sub" {
				return se
			}
		}
		t.Fatalf("q-sub not in %+v", out.Sessions)
		return session{}
	}
	checkFor(t, 5*time.Second, func() error {
		if find().Online {
			return fmt.Errorf("q-sub still online")
		}
		return nil
	})
	pub := crashPub3(t, a.mqttAddr(), "q-pub")
	for i := range 8 {
		if tok := pub.Publish("q/x", 1, false, fmt.Sprintf("q-%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	pub.Disconnect(0)
	if se := find(); se.Online || se.Queued != 5 || se.Dropped != 3 || se.ExpiresAt == nil {
		t.Fatalf("session %+v: want offline, 5 queued, 3 dropped, an expiry", se)
	}
	if n := scrapeCounter(t, "http://"+a.httpAddr()+"/metrics", "tether_mqtt_queue_dropped_total"); n != 3 {
		t.Errorf("tether_mqtt_queue_dropped_total = %v, want 3", n)
	}

	var got payloadSet
	sub = crashSub3(t, a.mqttAddr(), "q-sub", &got)
	defer sub.Disconnect(0)
	var want payloadSet
	for i := range 5 {
		want.add(fmt.Sprintf("q-%d", i))
	}
	checkFor(t, 10*time.Second, func() error {
		if n, one := got.missing(&want); n > 0 {
			return fmt.Errorf("%d of the 5 queued messages missing (e.g. %s)", n, one)
		}
		return nil
	})
	if got.len() != 5 {
		t.Errorf("received %d messages, want the 5 that fitted", got.len())
	}
	checkFor(t, 5*time.Second, func() error {
		if se := find(); !se.Online || se.Queued != 0 || se.ExpiresAt != nil {
			return fmt.Errorf("session after it returned: %+v", se)
		}
		return nil
	})
}

// A command to an offline device whose queue is full is refused for its
// session and marked failed with the reason; the one that fitted reaches
// the device when it returns.
func TestQueueFullFailsCommand(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = "off", "off"
	cfg.MQTT.MaxQueuedMessages = 1
	a := startTestApp(t, cfg)
	s := login(t, a, "admin", simAdminPassword)
	var dev struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if code := s.do(t, "POST", "/devices", map[string]any{"id": "qdev-1", "name": "q", "type": "sensor"}, &dev); code != http.StatusCreated {
		t.Fatalf("register: %d", code)
	}
	connect := func(got *payloadSet) paho3.Client {
		o := paho3.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID(dev.ID).
			SetUsername(dev.ID).SetPassword(dev.Secret).SetProtocolVersion(4).SetCleanSession(false).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true).
			SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got.add(m.Topic()) })
		c := paho3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect device: %v", tok.Error())
		}
		return c
	}
	var none payloadSet
	c := connect(&none)
	if tok := c.Subscribe("devices/qdev-1/commands/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	c.Disconnect(100)
	waitSessionOffline(t, a, dev.ID)
	send := func(name string) simCommand {
		var cmd simCommand
		body := map[string]any{"name": name, "params": map[string]any{}, "timeout": 60}
		if code := s.do(t, "POST", "/devices/qdev-1/commands", body, &cmd); code/100 != 2 {
			t.Fatalf("send %s: %d", name, code)
		}
		return cmd
	}
	first, second := send("first"), send("second")
	checkFor(t, 5*time.Second, func() error {
		var cmd simCommand
		if code := s.do(t, "GET", "/commands/"+second.ID, nil, &cmd); code != http.StatusOK {
			return fmt.Errorf("GET command: %d", code)
		}
		if cmd.Status != "failed" || !strings.Contains(cmd.Error, "queue full") {
			return fmt.Errorf("refused command: status %q, error %q; want failed, queue full", cmd.Status, cmd.Error)
		}
		return nil
	})
	var got payloadSet
	c = connect(&got)
	defer c.Disconnect(0)
	checkFor(t, 5*time.Second, func() error {
		var cmd simCommand
		if code := s.do(t, "GET", "/commands/"+first.ID, nil, &cmd); code != http.StatusOK {
			return fmt.Errorf("GET command: %d", code)
		}
		if cmd.Status != "delivered" {
			return fmt.Errorf("queued command: status %q, want delivered", cmd.Status)
		}
		return nil
	})
	if got.len() != 1 {
		t.Errorf("device received %d commands, want 1", got.len())
	}
}

// When the queues together near mqtt.max_queue_store_bytes, /readyz says
// so (still ready) and GET /broker shows their use.
func TestQueueStoreNearFullWarns(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = "off", "off"
	cfg.MQTT.MaxQueuedBytes, cfg.MQTT.MaxQueueStoreBytes = 8192, 8192
	a := startTestApp(t, cfg)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + a.httpAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusOK || strings.Contains(body, "warnings") {
		t.Fatalf("/readyz before: %d %s", code, body)
	}
	var none payloadSet
	sub := crashSub3(t, a.mqttAddr(), "near-sub", &none)
	if tok := sub.Subscribe("near/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sub.Disconnect(100)
	waitSessionOffline(t, a, "near-sub")
	pub := crashPub3(t, a.mqttAddr(), "near-pub")
	defer pub.Disconnect(0)
	payload := strings.Repeat("x", 512)
	for i := range 20 {
		if tok := pub.Publish("near/x", 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	if code, body := readyz(); code != http.StatusOK || !strings.Contains(body, "mqtt.max_queue_store_bytes") {
		t.Fatalf("/readyz near the bound: %d %s", code, body)
	}
	s := login(t, a, "admin", simAdminPassword)
	var b struct {
		Used  int64 `json:"queue_store_bytes"`
		Limit int64 `json:"queue_store_limit_bytes"`
	}
	if code := s.do(t, "GET", "/broker", nil, &b); code != http.StatusOK || b.Limit != 8192 || b.Used*10 <= b.Limit*9 {
		t.Fatalf("GET /broker: %d, queue store %d of %d", code, b.Used, b.Limit)
	}
}

// waitSessionOffline waits until a's broker has seen session id go
// offline.
func waitSessionOffline(t *testing.T, a *app, id string) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		for _, se := range a.store.Sessions() {
			if se.ClientID == id && !se.Online {
				return nil
			}
		}
		return fmt.Errorf("session %s not offline yet", id)
	})
}
