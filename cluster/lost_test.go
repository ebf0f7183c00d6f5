package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestLostNodeHeardAgain: a node that another took for gone while it was
// alive (its beats late past peerExpiry: under the race detector at load
// 16, TestClusterFlowControl's publishing nodes heard the receiving one's
// beats up to 4.4 s apart, and once lost 97 acknowledged messages that
// were never sent to it, counted nowhere) is, once heard again, sent
// messages at once, with the filters it had: not only after asking for
// them, a round trip that to a node whose bus reader is behind takes
// seconds (meanwhile messages for it were not sent, counted nowhere). What
// was published for its subscribers while it was taken for gone is
// counted (tether_cluster_messages_dropped_total{reason="lost"}) and
// logged. The late beats are played here: l1 forgets l2 as if its beats
// had stopped, then takes one of them.
func TestLostNodeHeardAgain(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	// A subscriber of a filter and a shared group's only member.
	var got inbox
	sub := testmqtt.Client(t, b.addr, "lost-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("lost/#", 1, nil))
	member := testmqtt.Client(t, b.addr, "lost-member", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", member.Subscribe("$share/g/grp/#", 1, nil))
	waitRoute(t, a, b, "lost/x")
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if p := (*a.node.peers.Load())[b.node.Name()]; p == nil || p.in == nil || p.in.shared["$share/g/grp/#"] == "" {
			return fmt.Errorf("%s does not know of the group on %s yet", a.node.Name(), b.node.Name())
		}
		return nil
	})
	pub := testmqtt.Client(t, a.addr, "lost-pub", true, false, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("lost/x", 1, false, "before"))
	testmqtt.WaitToken(t, "publish", pub.Publish("grp/x", 1, false, "before"))
	got.waitN(t, 2)

	// l2's real beats go on (one a second): one that comes while l1 has
	// it taken for gone ends that early (it counts what was missed so
	// far, and the rest is sent). Then the round is played again.
	lost := a.node.m.dropped.WithLabelValues("lost")
	for round := 1; ; round++ {
		if round > 5 {
			t.Fatalf("%s heard a real beat of %s within each of 5 rounds", a.node.Name(), b.node.Name())
		}
		before := testmqtt.Counter(t, lost)
		a.node.forget(time.Now().Add(peerExpiry + time.Second))
		if slices.Contains(a.node.Routes("lost/x"), b.node.Name()) {
			t.Fatalf("%s still routes to %s", a.node.Name(), b.node.Name())
		}
		testmqtt.WaitToken(t, "publish", pub.Publish("lost/x", 1, false, "meanwhile"))
		testmqtt.WaitToken(t, "publish", pub.Publish("grp/x", 1, false, "meanwhile"))
		testmqtt.WaitToken(t, "publish", pub.Publish("other/x", 1, false, "for nobody"))
		if (*a.node.lost.Load())[b.node.Name()] == nil {
			t.Logf("round %d: a real beat of %s came in between", round, b.node.Name())
			waitRoute(t, a, b, "lost/x")
			continue
		}

		// l2's next beat, as it sends it (or its real one, if it comes
		// first: the same).
		data, err := json.Marshal(beat{Node: b.node.name, Inst: b.node.inst, Version: b.node.local.Load().version, Hears: []string{a.node.Name()}})
		if err != nil {
			t.Fatal(err)
		}
		a.node.onBeat(&nats.Msg{Subject: subjBeat, Data: data})
		if r := a.node.Routes("lost/x"); !slices.Contains(r, b.node.Name()) {
			t.Errorf("%s heard %s again, and routes lost/x to %v: not to it until it has asked for its filters again", a.node.Name(), b.node.Name(), r)
		}
		// The subscriber's message and the group's.
		if l := testmqtt.Counter(t, lost) - before; l != 2 {
			t.Errorf("%v messages counted as not sent to %s while taken for gone, want 2", l, b.node.Name())
		}
		break
	}
	testmqtt.WaitToken(t, "publish", pub.Publish("lost/x", 1, false, "after"))
	testmqtt.WaitToken(t, "publish", pub.Publish("grp/x", 1, false, "after"))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		var after int
		for _, m := range got.all() {
			if string(m.Payload()) == "after" {
				after++
			}
		}
		if after != 2 {
			return fmt.Errorf("%d of the 2 messages published after %s was heard again", after, b.node.Name())
		}
		return nil
	})
}

// TestDeadNodeForgotten: a node that vanishes from the bus without a
// goodbye (its NATS server gone, as when its process is killed) is still
// forgotten about peerExpiry after its last beat: the node that forgets
// it hears the bus itself (caughtUp answers at once).
func TestDeadNodeForgotten(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	gone := make(chan string, 1)
	a.node.SetNodeGone(func(name string) { gone <- name })
	start := time.Now()
	b.node.ns.Shutdown()
	select {
	case name := <-gone:
		if name != b.node.Name() {
			t.Fatalf("%s took %s for gone", a.node.Name(), name)
		}
		t.Logf("%s forgot %s after %v", a.node.Name(), name, time.Since(start).Round(time.Millisecond))
	case <-time.After(4 * peerExpiry):
		t.Fatalf("%s still hears %d nodes, %v after %s vanished", a.node.Name(), len(a.node.Nodes()), 4*peerExpiry, b.node.Name())
	}
}
