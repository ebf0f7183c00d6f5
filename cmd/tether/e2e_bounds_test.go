package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker/sessions"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
)

// retain publishes a retained QoS 1 message and returns the PUBACK's
// reason code.
func (m *mq) retain(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := m.c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: true})
	if pr == nil {
		t.Fatalf("publish %s: %v (no PUBACK)", topic, err)
	}
	return pr.ReasonCode
}

// TestBoundsServe: tether serve takes mqtt.max_retained_messages_per_device
// and mqtt.max_subscriptions_per_client from its configuration, holds a
// device to them over a restart (its retained messages and its persistent
// session reloaded), and counts the refusals on /metrics.
func TestBoundsServe(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.MQTT.MaxRetainedMessagesPerDevice = 2
	cfg.MQTT.MaxSubscriptionsPerClient = 2
	a := startTestApp(t, cfg)
	_, secret, err := a.registry.CreateDevice(context.Background(), devices.NewDevice{ID: "bound"})
	if err != nil {
		t.Fatal(err)
	}
	opts := mqOpts{id: "bound", user: "bound", pass: secret, expiry: 3600}
	m := mustMQ(t, a.mqttAddr(), opts)
	for i, want := range []byte{0, 0, 0x97} {
		if code := m.retain(t, fmt.Sprint("devices/bound/responses/", i), "r"); code != want {
			t.Fatalf("retained %d: PUBACK 0x%02x, want 0x%02x", i, code, want)
		}
	}
	for i, want := range []byte{1, 1, 0x97} {
		if code := m.sub(t, fmt.Sprint("devices/bound/commands/", i)); code != want {
			t.Fatalf("filter %d: SUBACK 0x%02x, want 0x%02x", i, code, want)
		}
	}
	metrics := "http://" + a.httpAddr() + "/metrics"
	if n := scrapeCounter(t, metrics, `tether_mqtt_retained_refused_total{limit="device_messages"}`); n != 1 {
		t.Fatalf("tether_mqtt_retained_refused_total{limit=device_messages} %v, want 1", n)
	}
	if n := scrapeCounter(t, metrics, "tether_mqtt_subscriptions_refused_total"); n != 1 {
		t.Fatalf("tether_mqtt_subscriptions_refused_total %v, want 1", n)
	}
	if n := scrapeCounter(t, metrics, "tether_mqtt_retained_bytes"); n < 2*26 {
		t.Fatalf("tether_mqtt_retained_bytes %v", n)
	}
	m.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	a = startTestApp(t, cfg)
	m = mustMQ(t, a.mqttAddr(), opts)
	if !m.present {
		t.Fatal("no session after the restart")
	}
	if code := m.retain(t, "devices/bound/responses/2", "r"); code != 0x97 {
		t.Fatalf("retained after the restart: PUBACK 0x%02x, want 0x97", code)
	}
	if code := m.sub(t, "devices/bound/commands/2"); code != 0x97 {
		t.Fatalf("new filter after the restart: SUBACK 0x%02x, want 0x97", code)
	}
	if code := m.sub(t, "devices/bound/commands/0"); code != 1 {
		t.Fatalf("held filter after the restart: SUBACK 0x%02x, want 1", code)
	}
	if code := m.retain(t, "devices/bound/responses/0", ""); code != 0 {
		t.Fatalf("delete: PUBACK 0x%02x", code)
	}
	if code := m.retain(t, "devices/bound/responses/2", "r"); code != 0 {
		t.Fatalf("after a deletion: PUBACK 0x%02x", code)
	}
}

// TestClusterRetainedBound: each node holds its own clients to its
// retained bounds and never refuses what another node accepted, whether
// it comes as it is published or in the copy a joining node takes: node2,
// whose bound (3) node1's clients pass, retains all of node1's messages,
// counts them (its own clients are then refused), and so does node3,
// which joins later with a bound of 2.
func TestClusterRetainedBound(t *testing.T) {
	apps := startCluster(t, 2, func(i int, cfg *configs.Config) {
		if i == 1 {
			cfg.MQTT.MaxRetainedMessages = 3
		}
	})
	p := mustMQ(t, apps[0].mqttAddr(), mqOpts{id: "node1-client"})
	for i := range 5 {
		if code := p.retain(t, fmt.Sprint("state/", i), "on"); code != 0 {
			t.Fatalf("node1: PUBACK 0x%02x", code)
		}
	}
	held := func(a *app) error {
		if n := len(a.broker.Server.Topics.Messages("state/#")); n != 5 {
			return fmt.Errorf("%s retains %d of 5", a.cluster.Name(), n)
		}
		if n, _ := a.retainLimit.RetainedUsage(""); n != 5 {
			return fmt.Errorf("%s counts %d of 5", a.cluster.Name(), n)
		}
		return nil
	}
	checkFor(t, 10*time.Second, func() error { return held(apps[1]) })
	q := mustMQ(t, apps[1].mqttAddr(), mqOpts{id: "node2-client"})
	if code := q.retain(t, "state/9", "on"); code != 0x97 {
		t.Fatalf("node2's own client past its bound: PUBACK 0x%02x, want 0x97", code)
	}

	cfg := testConfig(t)
	cfg.Cluster.Node, cfg.Cluster.Listen, cfg.Cluster.Secret = "node3", "127.0.0.1:0", testClusterSecret
	cfg.Cluster.Peers = []string{apps[0].cluster.RouteAddr()}
	cfg.MQTT.MaxRetainedMessages = 2
	c := startTestApp(t, cfg)
	checkFor(t, 20*time.Second, func() error { return held(c) })
	// The copies belong to nobody on the nodes that took them.
	for _, a := range []*app{apps[1], c} {
		if n, _ := a.retainLimit.RetainedUsage("node1-client"); n != 0 {
			t.Fatalf("%s counts %d copies for their publisher", a.cluster.Name(), n)
		}
	}
}

// TestDeepRetainedServe: retained messages with more levels than
// mqtt.max_topic_levels, as a Tether without the bound stored them
// (written here into the data directory by the session store while the
// server is stopped), are not loaded by tether serve: they are deleted
// from the store and counted on /metrics, and the others are delivered.
func TestDeepRetainedServe(t *testing.T) {
	cfg := testConfig(t)
	st, err := sessions.Open(cfg.DataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Init(nil); err != nil {
		t.Fatal(err)
	}
	deep := "seed/" + strings.Repeat("l/", cfg.MQTT.MaxTopicLevels) + "x"
	for topic, payload := range map[string]string{"seed/kept": "kept", deep: "deep"} {
		st.PutRetained(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: topic, Payload: []byte(payload), Created: time.Now().Unix()})
	}
	<-st.Barrier()
	st.Close()

	a := startTestApp(t, cfg)
	if n := scrapeCounter(t, "http://"+a.httpAddr()+"/metrics", `tether_store_deep_removed_total{what="retained"}`); n != 1 {
		t.Fatalf(`tether_store_deep_removed_total{what="retained"} %v, want 1`, n)
	}
	if _, ok := a.broker.Server.Topics.Retained.Get(deep); ok {
		t.Fatal("the deep retained message was loaded")
	}
	m := mustMQ(t, a.mqttAddr(), mqOpts{id: "reader"})
	if code := m.sub(t, "seed/#"); code > 2 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	m.waitFor(t, onTopic("seed/kept"), onTopic(deep))
	m.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// It was deleted: the next start finds none.
	a = startTestApp(t, cfg)
	if n := scrapeCounter(t, "http://"+a.httpAddr()+"/metrics", `tether_store_deep_removed_total{what="retained"}`); n != 0 {
		t.Fatalf(`after a restart: tether_store_deep_removed_total{what="retained"} %v, want 0`, n)
	}
	if _, ok := a.broker.Server.Topics.Retained.Get("seed/kept"); !ok {
		t.Fatal("seed/kept not retained after a restart")
	}
}

// TestSubscriptionLevelsServe: tether serve takes
// mqtt.max_subscription_levels_per_client from its configuration and
// counts the refusals on /metrics.
func TestSubscriptionLevelsServe(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.MQTT.MaxSubscriptionLevelsPerClient = 5
	a := startTestApp(t, cfg)
	_, secret, err := a.registry.CreateDevice(context.Background(), devices.NewDevice{ID: "lv"})
	if err != nil {
		t.Fatal(err)
	}
	m := mustMQ(t, a.mqttAddr(), mqOpts{id: "lv", user: "lv", pass: secret})
	// devices, lv, commands, a: 4; then b and b/c: 6; b alone: 5.
	for _, s := range []struct {
		filter string
		want   byte
	}{{"devices/lv/commands/a", 1}, {"devices/lv/commands/b/c", 0x97}, {"devices/lv/commands/b", 1}} {
		if code := m.sub(t, s.filter); code != s.want {
			t.Fatalf("%s: SUBACK 0x%02x, want 0x%02x", s.filter, code, s.want)
		}
	}
	if n := scrapeCounter(t, "http://"+a.httpAddr()+"/metrics", "tether_mqtt_subscription_levels_refused_total"); n != 1 {
		t.Fatalf("tether_mqtt_subscription_levels_refused_total %v, want 1", n)
	}
}
