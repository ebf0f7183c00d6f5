package cluster

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.uber.org/goleak"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/internal/testmqtt"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"))
}

// testNode is an engine with a TCP listener and its cluster node.
type testNode struct {
	srv  *mqtt.Server
	node *Node
	addr string
}

// startNodes starts count nodes with embedded NATS, each routing to the
// first (NATS gossips the rest of the mesh), and waits until every node
// hears every other.
func startNodes(t *testing.T, count int) []*testNode {
	t.Helper()
	var out []*testNode
	for i := 0; i < count; i++ {
		var peers []string
		if i > 0 {
			peers = []string{out[0].node.RouteAddr()}
		}
		out = append(out, startNode(t, fmt.Sprintf("n%d", i+1), peers, testSecret))
	}
	waitMesh(t, out)
	return out
}

const testSecret = "route-secret-for-tests"

func startNode(t *testing.T, name string, peers []string, secret string) *testNode {
	t.Helper()
	return startNodeWith(t, Options{Node: name, Listen: "127.0.0.1:0", Peers: peers, Secret: secret})
}

func startNodeWith(t *testing.T, o Options) *testNode {
	t.Helper()
	return startNodeBefore(t, o, nil)
}

// startNodeBefore starts a node, calling before (if not nil) with its
// engine before it joins the bus: what its store held at start.
func startNodeBefore(t *testing.T, o Options, before func(*mqtt.Server)) *testNode {
	t.Helper()
	return startNodeEngine(t, o, before, nil)
}

// startNodeEngine starts a node whose engine has caps (nil: mochi's
// defaults) and the hooks besides the node's own, added first.
func startNodeEngine(t *testing.T, o Options, before func(*mqtt.Server), caps *mqtt.Capabilities, hooks ...mqtt.Hook) *testNode {
	t.Helper()
	o.Logger = testmqtt.Logger()
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: testmqtt.Logger(), Capabilities: caps})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.AddHook(n.Hook(), nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(srv)
	}
	if err := n.Attach(srv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testmqtt.CloseEngine(srv)
		_ = n.Close()
	})
	return &testNode{srv: srv, node: n, addr: tcp.Address()}
}

func waitMesh(t *testing.T, nodes []*testNode) {
	t.Helper()
	testmqtt.CheckFor(t, 20*time.Second, func() error {
		for _, n := range nodes {
			if got := len(n.node.Nodes()); got != len(nodes) {
				return fmt.Errorf("%s hears %d nodes, want %d", n.node.Name(), got, len(nodes))
			}
		}
		return nil
	})
}

// waitRoute waits until from sends messages on name to the node to.
func waitRoute(t *testing.T, from, to *testNode, name string) {
	t.Helper()
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, r := range from.node.Routes(name) {
			if r == to.node.Name() {
				return nil
			}
		}
		return fmt.Errorf("%s does not route %q to %s yet", from.node.Name(), name, to.node.Name())
	})
}

// inbox collects messages.
type inbox struct {
	mu  sync.Mutex
	got []paho.Message
}

func (b *inbox) add(m paho.Message) { b.mu.Lock(); b.got = append(b.got, m); b.mu.Unlock() }

func (b *inbox) all() []paho.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]paho.Message(nil), b.got...)
}

func (b *inbox) waitN(t *testing.T, n int) []paho.Message {
	t.Helper()
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if got := len(b.all()); got < n {
			return fmt.Errorf("%d messages, want %d", got, n)
		}
		return nil
	})
	return b.all()
}

// TestMessagesCrossNodes: a subscriber on each node gets what a client on
// another node publishes, at QoS 0, 1 and 2, once each (no loop back, no
// duplicate), including a topic with '.', '*', '>' and spaces.
func TestMessagesCrossNodes(t *testing.T) {
	nodes := startNodes(t, 3)
	const topic = "a.b/*/> x/#x"
	_ = topic
	names := []string{"plain/t", "we.ird/*/>/with space"}
	var boxes []*inbox
	for i, n := range nodes {
		b := new(inbox)
		boxes = append(boxes, b)
		c := testmqtt.Client(t, n.addr, fmt.Sprintf("sub%d", i), true, true, b.add)
		for _, name := range names {
			testmqtt.WaitToken(t, "subscribe", c.Subscribe(name, 2, nil))
		}
	}
	for _, from := range nodes {
		for _, to := range nodes {
			if from != to {
				for _, name := range names {
					waitRoute(t, from, to, name)
				}
			}
		}
	}
	pub := testmqtt.Client(t, nodes[0].addr, "pub", true, true, nil)
	sent := 0
	for _, name := range names {
		for qos := byte(0); qos <= 2; qos++ {
			testmqtt.WaitToken(t, "publish", pub.Publish(name, qos, false, fmt.Sprintf("%s q%d", name, qos)))
			sent++
		}
	}
	for i, b := range boxes {
		got := b.waitN(t, sent)
		seen := map[string]byte{}
		for _, m := range got {
			if _, dup := seen[string(m.Payload())]; dup {
				t.Errorf("node %d: %q twice", i+1, m.Payload())
			}
			seen[string(m.Payload())] = m.Qos()
			if !strings.HasSuffix(string(m.Payload()), fmt.Sprintf("q%d", m.Qos())) {
				t.Errorf("node %d: %q arrived at QoS %d", i+1, m.Payload(), m.Qos())
			}
		}
	}
	// Nothing more arrives: a round trip on a probe topic proves the bus
	// has delivered everything before it.
	for _, b := range boxes {
		b.mu.Lock()
		b.got = nil
		b.mu.Unlock()
	}
	probe := testmqtt.Client(t, nodes[2].addr, "probe-sub", true, true, boxes[2].add)
	testmqtt.WaitToken(t, "subscribe", probe.Subscribe("probe", 1, nil))
	waitRoute(t, nodes[0], nodes[2], "probe")
	testmqtt.WaitToken(t, "publish", pub.Publish("probe", 1, false, "probe"))
	got := boxes[2].waitN(t, 1)
	if len(got) != 1 || string(got[0].Payload()) != "probe" {
		t.Fatalf("after the probe: %d messages, first %q", len(got), got[0].Payload())
	}
}

// TestInterestOnly: a node with no matching subscription is sent nothing.
func TestInterestOnly(t *testing.T) {
	nodes := startNodes(t, 2)
	pub := testmqtt.Client(t, nodes[0].addr, "pub", true, true, nil)
	for i := 0; i < 10; i++ {
		testmqtt.WaitToken(t, "publish", pub.Publish("nobody/there", 1, false, "x"))
	}
	if got := testmqtt.Counter(t, nodes[0].node.m.sent); got != 0 {
		t.Fatalf("%v messages sent with no interest", got)
	}
}

// TestRetainedCrossNodes: a retained message published on one node is
// delivered to a later subscriber on another, and its deletion crosses too.
func TestRetainedCrossNodes(t *testing.T) {
	nodes := startNodes(t, 2)
	pub := testmqtt.Client(t, nodes[0].addr, "pub", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("state/x", 1, true, "on"))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if len(nodes[1].srv.Topics.Messages("state/x")) != 1 {
			return fmt.Errorf("not retained on n2 yet")
		}
		return nil
	})
	b := new(inbox)
	c := testmqtt.Client(t, nodes[1].addr, "late", true, true, b.add)
	testmqtt.WaitToken(t, "subscribe", c.Subscribe("state/#", 1, nil))
	got := b.waitN(t, 1)
	if string(got[0].Payload()) != "on" || !got[0].Retained() {
		t.Fatalf("got %q retained=%v", got[0].Payload(), got[0].Retained())
	}
	// A node that joins later has it too.
	late := startNode(t, "n3", []string{nodes[0].node.RouteAddr()}, testSecret)
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if len(late.srv.Topics.Messages("state/x")) != 1 {
			return fmt.Errorf("not retained on the late node")
		}
		return nil
	})
	waitMesh(t, append(nodes, late))
	testmqtt.WaitToken(t, "publish", pub.Publish("state/x", 1, true, ""))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, n := range []*testNode{nodes[1], late} {
			if c := len(n.srv.Topics.Messages("state/x")); c != 0 {
				return fmt.Errorf("still %d retained on %s", c, n.node.Name())
			}
		}
		return nil
	})
}

// TestRetainedBeforeMesh: a retained message published on a node before
// the others hear it (its routes to them not up yet) reaches them once
// they do, although they copied each other's retained messages long
// before, and replaces an older one they hold on its topic; one that node
// held from before its start (its store's) does not: it may have been
// deleted elsewhere meanwhile.
func TestRetainedBeforeMesh(t *testing.T) {
	nodes := startNodes(t, 2)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	later := l.Addr().String() // a node that is not there yet
	l.Close()
	c := startNode(t, "n3", []string{later}, testSecret)
	if got := len(c.node.Nodes()); got != 1 {
		t.Fatalf("n3 hears %d nodes before any route is up", got)
	}
	retain := func(n *testNode, topic, payload string, created int64) {
		n.srv.Topics.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: topic, Payload: []byte(payload), Created: created})
	}
	retain(c, "state/old", "from before the start", c.node.sync.started-60)
	for _, n := range nodes { // what they hold of a device from a minute ago
		retain(n, "state/dev", "offline", time.Now().Unix()-60)
	}
	pub := testmqtt.Client(t, c.addr, "pub", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("state/new", 1, true, "on"))
	testmqtt.WaitToken(t, "publish", pub.Publish("state/dev", 1, true, "online"))

	// The missing node comes, routed to n1: n3 reaches everyone through it.
	d := startNodeWith(t, Options{Node: "n4", Listen: later, Peers: []string{nodes[0].node.RouteAddr()}, Secret: testSecret})
	all := append(nodes, c, d)
	waitMesh(t, all)
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, n := range all {
			if len(n.srv.Topics.Messages("state/new")) != 1 {
				return fmt.Errorf("state/new not retained on %s", n.node.Name())
			}
		}
		return nil
	})
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, n := range all {
			if m := n.srv.Topics.Messages("state/dev"); len(m) != 1 || string(m[0].Payload) != "online" {
				return fmt.Errorf("%s holds %d messages on state/dev, not n3's newer one", n.node.Name(), len(m))
			}
		}
		return nil
	})
	for _, n := range nodes {
		if len(n.srv.Topics.Messages("state/old")) != 0 {
			t.Fatalf("%s copied n3's retained message from before its start", n.node.Name())
		}
	}
}

// TestSharedSubscriptionOnce: a shared group with members on every node
// gets each message once across the cluster; a group with members only on
// other nodes gets it too.
func TestSharedSubscriptionOnce(t *testing.T) {
	nodes := startNodes(t, 3)
	var counts sync.Map // payload -> *int
	var mu sync.Mutex
	count := func(m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		v, _ := counts.LoadOrStore(string(m.Payload()), new(int))
		*v.(*int)++
	}
	for i, n := range nodes[1:] {
		c := testmqtt.Client(t, n.addr, fmt.Sprintf("member%d", i), true, false, count)
		testmqtt.WaitToken(t, "subscribe", c.Subscribe("$share/g/jobs/+", 1, nil))
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, n := range nodes[1:] {
			p := (*nodes[0].node.peers.Load())[n.node.Name()]
			if p == nil || p.in == nil || len(p.in.shared) == 0 {
				return fmt.Errorf("n1 does not know %s's group yet", n.node.Name())
			}
		}
		return nil
	})
	pub := testmqtt.Client(t, nodes[0].addr, "pub", true, true, nil)
	const total = 40
	for i := 0; i < total; i++ {
		testmqtt.WaitToken(t, "publish", pub.Publish("jobs/a", 1, false, fmt.Sprint(i)))
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		n := 0
		counts.Range(func(_, _ any) bool { n++; return true })
		if n != total {
			return fmt.Errorf("%d of %d jobs delivered", n, total)
		}
		return nil
	})
	// A member on the publishing node too: it serves the group, the
	// others get nothing of it.
	local := testmqtt.Client(t, nodes[0].addr, "member-local", true, false, count)
	testmqtt.WaitToken(t, "subscribe", local.Subscribe("$share/g/jobs/+", 1, nil))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if len(nodes[0].node.local.Load().shared) == 0 {
			return fmt.Errorf("n1 does not know its own member yet")
		}
		return nil
	})
	for i := total; i < 2*total; i++ {
		testmqtt.WaitToken(t, "publish", pub.Publish("jobs/b", 1, false, fmt.Sprint(i)))
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		n := 0
		counts.Range(func(_, _ any) bool { n++; return true })
		if n != 2*total {
			return fmt.Errorf("%d of %d jobs delivered", n, 2*total)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	counts.Range(func(k, v any) bool {
		if *v.(*int) != 1 {
			t.Errorf("job %s delivered %d times", k, *v.(*int))
		}
		return true
	})
}

// TestTakeoverAcrossNodes: connecting on one node with a client id live
// on another disconnects it there.
func TestTakeoverAcrossNodes(t *testing.T) {
	nodes := startNodes(t, 2)
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker("tcp://" + nodes[0].addr).SetClientID("dup").SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	first := paho.NewClient(o)
	testmqtt.WaitToken(t, "connect", first.Connect())
	defer first.Disconnect(0)
	if !nodes[1].node.Claim("dup", brokerOwner()) {
		t.Fatal("claim refused")
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection was not taken over")
	}
}

// TestDecodeRefusesGarbage: a bus message that is not a PUBLISH is an
// error, never a panic.
func TestDecodeRefusesGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {0x30}, {0x30, 0x05, 0, 1, 'a'}, {0x82, 0x00}, []byte("hello world")} {
		if _, err := decodePublish(b); err == nil {
			t.Errorf("%x decoded", b)
		}
	}
}

func FuzzDecodePublish(f *testing.F) {
	f.Add([]byte{0x30, 0x03, 0, 1, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = decodePublish(b) })
}

func brokerOwner() broker.SessionOwner { return broker.SessionOwner{Anonymous: true} }

// allowAll lets every client in and everywhere.
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// TestRouteSecret: a NATS server without the routes' password does not
// join: its node hears nobody and nobody hears it, while a node with the
// password, started after it, joins.
func TestRouteSecret(t *testing.T) {
	nodes := startNodes(t, 2)
	intruder := startNode(t, "intruder", []string{nodes[0].node.RouteAddr()}, "not-the-route-secret")
	startNode(t, "n3", []string{nodes[0].node.RouteAddr()}, testSecret)
	testmqtt.CheckFor(t, 20*time.Second, func() error {
		if got := len(nodes[0].node.Nodes()); got != 3 {
			return fmt.Errorf("n1 hears %d nodes, want 3", got)
		}
		return nil
	})
	for _, info := range nodes[0].node.Nodes() {
		if info.Name == "intruder" {
			t.Fatal("n1 hears the node without the secret")
		}
	}
	if got := len(intruder.node.Nodes()); got != 1 || intruder.node.ns.NumRoutes() != 0 {
		t.Fatalf("the node without the secret hears %d nodes over %d routes", got, intruder.node.ns.NumRoutes())
	}
}

// TestRetainedRestartedNodeCatchesUp: a node that starts with an older
// retained message in its store (a device's status from before it went
// down) takes the newer one the others hold; one only it holds stays
// (its own), and one it holds newer than the others' is kept.
func TestRetainedRestartedNodeCatchesUp(t *testing.T) {
	nodes := startNodes(t, 1)
	now := time.Now().Unix()
	retain := func(srv *mqtt.Server, topic, payload string, created int64) {
		srv.Topics.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: topic, Payload: []byte(payload), Created: created})
	}
	retain(nodes[0].srv, "devices/d1/status", "offline", now-10)
	retain(nodes[0].srv, "devices/d2/status", "online", now-100)
	late := startNodeBefore(t, Options{Node: "n2", Listen: "127.0.0.1:0", Peers: []string{nodes[0].node.RouteAddr()}, Secret: testSecret},
		func(srv *mqtt.Server) {
			retain(srv, "devices/d1/status", "online", now-60)  // older than n1's
			retain(srv, "devices/d2/status", "offline", now-50) // newer than n1's
			retain(srv, "devices/d3/status", "online", now-60)  // only here
		})
	want := map[string]string{"devices/d1/status": "offline", "devices/d2/status": "offline", "devices/d3/status": "online"}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for topic, payload := range want {
			if m := late.srv.Topics.Messages(topic); len(m) != 1 || string(m[0].Payload) != payload {
				return fmt.Errorf("n2 holds %d messages on %s, want %q", len(m), topic, payload)
			}
		}
		return nil
	})
}
