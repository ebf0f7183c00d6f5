package cluster

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// waitReady polls a node's readiness closely and returns as soon as it
// says ready, so that what the test does next happens at that moment.
func waitReady(t *testing.T, n *testNode, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := n.node.Healthy()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v", n.node.Name(), within, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestJoinBeforeReady: a node that starts says it is not ready until it
// has joined. At the moment it first says it is ready, a message its
// client publishes reaches a subscriber on the other node, a message
// published there reaches its own subscriber, and it holds the other
// node's retained messages. A node alone is ready once settled.
func TestJoinBeforeReady(t *testing.T) {
	a := startNode(t, "n1", nil, testSecret)
	if err := a.node.Healthy(); err == nil || !strings.Contains(err.Error(), "joining") {
		t.Fatalf("n1 just started: Healthy = %v, want joining", err)
	}
	waitReady(t, a, 10*time.Second)
	a.srv.Topics.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName: "state/dev", Payload: []byte("online"), Created: time.Now().Unix()})
	var onA inbox
	sub := testmqtt.Client(t, a.addr, "sub-a", true, true, nil)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("t/#", 1, func(_ paho.Client, m paho.Message) { onA.add(m) }))

	b := startNode(t, "n2", []string{a.node.RouteAddr()}, testSecret)
	err := b.node.Healthy()
	if err == nil {
		t.Fatal("n2 ready before it heard n1")
	}
	t.Logf("n2 at start: %v", err)
	waitReady(t, b, 20*time.Second)

	if m := b.srv.Topics.Messages("state/dev"); len(m) != 1 || string(m[0].Payload) != "online" {
		t.Fatalf("n2 ready without n1's retained message (%d)", len(m))
	}
	pub := testmqtt.Client(t, b.addr, "pub-b", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("t/from-b", 1, false, "hello"))
	if got := onA.waitN(t, 1); string(got[0].Payload()) != "hello" {
		t.Fatalf("n1's subscriber got %q", got[0].Payload())
	}
	// n1 knows n2 (it beat back naming n2), so n2's new subscriber's
	// filters go to a node that keeps them.
	var onB inbox
	subB := testmqtt.Client(t, b.addr, "sub-b", true, true, nil)
	testmqtt.WaitToken(t, "subscribe", subB.Subscribe("u/#", 1, func(_ paho.Client, m paho.Message) { onB.add(m) }))
	waitRoute(t, a, b, "u/x")
	pubA := testmqtt.Client(t, a.addr, "pub-a", true, true, nil)
	testmqtt.WaitToken(t, "publish", pubA.Publish("u/x", 1, false, "back"))
	onB.waitN(t, 1)

	// Joined holds: n1 leaving does not make n2 unready.
	_ = a.node.Close() // idempotent: the clean-up closes it again
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if got := len(b.node.Nodes()); got != 1 {
			return fmt.Errorf("n2 hears %d nodes", got)
		}
		return nil
	})
	if err := b.node.Healthy(); err != nil {
		t.Fatalf("n2 unready after n1 left: %v", err)
	}
}

// TestJoinWaitsForRoutedNode: a NATS server routed into the mesh with no
// Tether node on it (a node whose process hangs) keeps a new node
// unready, saying so, until joinMax; then it is ready.
func TestJoinWaitsForRoutedNode(t *testing.T) {
	a := startNode(t, "n1", nil, testSecret)
	silent, err := startEmbedded(&Options{Node: "silent", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret},
		"silent-token", testmqtt.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Shutdown(); silent.WaitForShutdown() })

	const max = 6 * time.Second // the bound under test
	start := time.Now()
	// Routed to both from its start (not through gossip, which may take
	// longer than joinSettle on a loaded machine).
	b := startNodeWith(t, Options{Node: "n2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr(), silent.ClusterAddr().String()},
		Secret: testSecret, joinMax: max})
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if err := b.node.Healthy(); err == nil || !strings.Contains(err.Error(), "1 of the 2 nodes it is routed to") {
			return errors.New("n2 does not wait for the silent server yet: " + errString(err))
		}
		return nil
	})
	if time.Since(start) >= max {
		t.Skip("the machine is too slow to see the wait before joinMax")
	}
	waitReady(t, b, 15*time.Second)
	if waited := time.Since(start); waited < max-time.Second {
		t.Fatalf("n2 ready after %v, before joinMax (%v) with a silent node routed", waited, max)
	}
	// n1 is not routed to the silent server through n2 alone: it was
	// routed to it from the start, and joined all the same (joinMax).
}

func errString(err error) string {
	if err == nil {
		return "ready"
	}
	return err.Error()
}

// startExternalNATS starts a NATS server on loopback (port 0: any); the
// test's clean-up stops it.
func startExternalNATS(t *testing.T, port int) *server.Server {
	t.Helper()
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, MaxPending: natsMaxPending})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// TestJoinAgainAfterBusReturns: two nodes on an external NATS that goes
// away and comes back. A node is not ready again until the other has
// beaten since: at the moment it first says ready, what its client
// publishes reaches the other node's subscriber.
func TestJoinAgainAfterBusReturns(t *testing.T) {
	ns := startExternalNATS(t, 0)
	url := "nats://" + ns.Addr().String()
	a := startNodeWith(t, Options{Node: "n1", NATSURL: url})
	b := startNodeWith(t, Options{Node: "n2", NATSURL: url})
	waitMesh(t, []*testNode{a, b})
	var onB inbox
	sub := testmqtt.Client(t, b.addr, "sub-b", true, true, nil)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("t/#", 1, func(_ paho.Client, m paho.Message) { onB.add(m) }))
	waitRoute(t, a, b, "t/x")
	waitReady(t, a, 20*time.Second)
	pub := testmqtt.Client(t, a.addr, "pub-a", true, true, nil)

	port := ns.Addr().(*net.TCPAddr).Port
	stopBus(t, ns, a)
	t0 := time.Now()
	startExternalNATS(t, port)
	waitReady(t, a, 20*time.Second)
	t.Logf("ready %v after the bus came back", time.Since(t0))
	testmqtt.WaitToken(t, "publish", pub.Publish("t/after", 1, false, "back"))
	got := onB.waitN(t, 1)
	t.Logf("delivered %v after the bus came back", time.Since(t0))
	if string(got[0].Payload()) != "back" {
		t.Fatalf("n2's subscriber got %q", got[0].Payload())
	}
	// Leave while the bus is up (the clean-up stops it first).
	_ = a.node.Close()
	_ = b.node.Close()
}

// TestCloseWithBusGone: a node whose external NATS server has gone
// leaves at once when closed. It waited for a PONG that could not come
// for the whole of nats.go's Flush timeout (10 s), on top of the
// broker's shutdown_grace.
func TestCloseWithBusGone(t *testing.T) {
	ns := startExternalNATS(t, 0)
	a := startNodeWith(t, Options{Node: "n1", NATSURL: "nats://" + ns.Addr().String()})
	waitReady(t, a, 20*time.Second)
	stopBus(t, ns, a)
	t0 := time.Now()
	_ = a.node.Close()
	// Not a speed claim: Close does nothing that takes time with the bus
	// gone; 10 s is what it waited before.
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("Close took %v with the bus gone", took)
	}
}

// stopBus stops the external NATS server ns and waits until node a says
// it is not ready.
func stopBus(t *testing.T, ns *server.Server, a *testNode) {
	t.Helper()
	ns.Shutdown()
	ns.WaitForShutdown()
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if a.node.Healthy() == nil {
			return errors.New(a.node.name + " still ready with the bus down")
		}
		return nil
	})
}
