package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestTopicLevelsAcrossNodes: a node with mqtt.max_topic_levels 8 refuses
// what another node (here with no bound: a rolling change, or a node gone
// bad) sends it on deeper topics, as it refuses its own clients': the
// retained copy it takes when it joins (counted in
// tether_cluster_retained_deep_refused_total) and a message routed live
// (tether_cluster_messages_dropped_total{reason="topic_levels"}); those
// within the bound come through.
func TestTopicLevelsAcrossNodes(t *testing.T) {
	nodes := startNodes(t, 1)
	deep := "state/" + strings.Repeat("x/", 18) + "end" // 20 levels
	for topic, payload := range map[string]string{deep: "deep", "state/ok": "ok"} {
		nodes[0].srv.Topics.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: topic, Payload: []byte(payload), Created: time.Now().Unix()})
	}
	n2 := startNodeWith(t, Options{Node: "n2", Listen: "127.0.0.1:0", Peers: []string{nodes[0].node.RouteAddr()},
		Secret: testSecret, MaxTopicLevels: 8})
	all := []*testNode{nodes[0], n2}
	waitMesh(t, all)
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if len(n2.srv.Topics.Messages("state/ok")) != 1 {
			return fmt.Errorf("state/ok not copied to n2 yet")
		}
		return nil
	})
	if m := n2.srv.Topics.Messages(deep); len(m) != 0 {
		t.Fatalf("n2 took a retained copy of %d levels", strings.Count(deep, "/")+1)
	}
	if v := testmqtt.Counter(t, n2.node.m.retainedDeep); v != 1 {
		t.Fatalf("tether_cluster_retained_deep_refused_total = %v, want 1", v)
	}

	// Live: a subscriber of everything on n2, a publisher on n1.
	b := new(inbox)
	sub := testmqtt.Client(t, n2.addr, "sub", true, true, b.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("#", 1, nil))
	waitRoute(t, nodes[0], n2, "live/ok")
	pub := testmqtt.Client(t, nodes[0].addr, "pub", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("live/"+strings.Repeat("y/", 18)+"end", 1, false, "deep"))
	testmqtt.WaitToken(t, "publish", pub.Publish("live/ok", 1, false, "ok"))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, m := range b.all() {
			if m.Topic() == "live/ok" {
				return nil
			}
		}
		return fmt.Errorf("live/ok not delivered on n2 yet")
	})
	for _, m := range b.all() {
		if strings.Count(m.Topic(), "/")+1 > 8 {
			t.Fatalf("n2 delivered %s", m.Topic())
		}
	}
	if v := testmqtt.Counter(t, n2.node.m.dropped.WithLabelValues("topic_levels")); v != 1 {
		t.Fatalf(`tether_cluster_messages_dropped_total{reason="topic_levels"} = %v, want 1`, v)
	}
}
