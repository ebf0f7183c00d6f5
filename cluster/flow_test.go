package cluster

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestFlowReleasedOnBye: a publisher held back by a node whose window is
// full (nothing acknowledges it) goes on at once when that node leaves,
// long before its wait would time out.
func TestFlowReleasedOnBye(t *testing.T) {
	a := startNodeWith(t, Options{Node: "f1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: 10 * time.Minute})
	b := startNodeWith(t, Options{Node: "f2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: 10 * time.Minute})
	waitMesh(t, []*testNode{a, b})
	sub := testmqtt.Client(t, b.addr, "flow-sub", true, false, func(m paho.Message) {})
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("flow/#", 1, nil))
	waitRoute(t, a, b, "flow/x")
	// The window to f2 is full: as if f2 had taken in nothing.
	w := (*a.node.peers.Load())["f2"].win
	w.mu.Lock()
	w.sent = flowWindow
	w.mu.Unlock()
	pub := testmqtt.Client(t, a.addr, "flow-pub", true, false, nil)
	first := pub.Publish("flow/x", 1, false, "held") // acknowledged, then held
	testmqtt.WaitToken(t, "first publish", first)
	second := pub.Publish("flow/x", 1, false, "after")
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 1 {
			return fmt.Errorf("%v publishers held back, want 1", v)
		}
		return nil
	})
	if second.WaitTimeout(0) {
		t.Fatal("the next publish was acknowledged while the first was held back")
	}
	_ = b.node.Close()
	testmqtt.WaitToken(t, "publish after f2 left", second)
}

// TestFlowHeldBySlowSubscriber: a node whose injections are held back by
// a slow but live subscriber (broker.Backpressure waits in rounds while
// it drains) says so, and a publisher on another node whose window
// towards it is full meanwhile keeps waiting, round after round, instead
// of taking the node for stuck and sending past the window: no wait
// times out, every message arrives, nothing is dropped. (Without the
// notices, the wait timed out after one round.)
func TestFlowHeldBySlowSubscriber(t *testing.T) {
	const wait = time.Second // the default
	a := startNodeWith(t, Options{Node: "h1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: wait})
	// h2's engine holds its injections for a subscriber that is behind;
	// an in-flight store of 16 (high-water mark 12, low 6) keeps the
	// test short.
	bp := broker.NewBackpressure(wait)
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = 16
	b := startNodeEngine(t, Options{Node: "h2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: wait},
		func(srv *mqtt.Server) { bp.Attach(srv) }, caps, bp)
	waitMesh(t, []*testNode{a, b})
	// About 3 acknowledgements a second: draining 6 takes about two
	// rounds, each of which sees about 3 (the floor is 1).
	var slow inbox
	sub := testmqtt.Client(t, b.addr, "held-sub", true, true, func(m paho.Message) {
		time.Sleep(300 * time.Millisecond)
		slow.add(m)
	})
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("held/#", 1, nil))
	waitRoute(t, a, b, "held/x")

	// h1's window towards h2 holds 8 messages (8,192 unless a test says
	// less: filling that many in time on a loaded machine is a test of
	// the machine). 24 QoS 1 messages for the slow subscriber: h2 takes
	// in 12, is held until it has drained to 6 (about two seconds),
	// takes in 6 more, is held again; meanwhile the window fills and the
	// publisher waits for credit, through h2's holds (at most
	// broker.WaitRounds rounds: 8 s).
	w := (*a.node.peers.Load())["h2"].win
	w.mu.Lock()
	w.count = 8
	w.mu.Unlock()
	const held = 24
	p1 := testmqtt.Client(t, a.addr, "held-pub", true, false, nil)
	for i := range held {
		testmqtt.WaitToken(t, "publish", p1.Publish("held/x", 1, false, fmt.Sprint(i)))
	}
	testmqtt.CheckFor(t, 60*time.Second, func() error {
		if got := len(slow.all()); got < held {
			// What a failure needs to be understood (seen once, 9 of 24
			// after a minute, in a -count=3 run beside other packages'
			// race tests): where the others went.
			return fmt.Errorf("%d of %d messages delivered (h2's engine dropped %d, in flight %d; the bus %v; h1's waits for h2 timed out %v times; h2's backpressure: %s)",
				got, held, atomic.LoadInt64(&b.srv.Info.MessagesDropped), atomic.LoadInt64(&b.srv.Info.InflightDropped),
				a.node.Dropped()+b.node.Dropped(), testmqtt.Counter(t, a.node.m.flowTimeouts), bpStatus(t, bp))
		}
		return nil
	})
	if v := testmqtt.Counter(t, a.node.m.flowWaits); v == 0 {
		t.Errorf("the publisher was never held back: the test means nothing (h2's backpressure: %s)", bpStatus(t, bp))
	}
	t.Logf("h2's injections held %v times; h1's publishers held %v times", testmqtt.Counter(t, bp.WaitsCounter()), testmqtt.Counter(t, a.node.m.flowWaits))
	if v := testmqtt.Counter(t, a.node.m.flowTimeouts); v != 0 {
		t.Errorf("%v waits for h2 timed out: it was taken for stuck while its subscriber drained", v)
	}
	if d := a.node.Dropped() + b.node.Dropped(); d != 0 {
		t.Errorf("the bus dropped %v messages", d)
	}
	if d := atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped); d != 0 {
		t.Errorf("h2's engine dropped %d messages", d)
	}
}

// TestFlowWaitGoesOnWhileAcknowledged: a publisher waiting for room in
// a window that the receiving node keeps acknowledging, but that other
// publishers keep filling first (several publishers towards a node that
// takes in slowly), waits another round as long as acknowledgements
// come, instead of taking the node for stuck and sending past the window
// (which lets the NATS server's pending bytes for that node outgrow its
// max_pending: it then closes the node's connection, losing all it held;
// TestClusterFlowControl at the default wait, 2026-12-02). Here the other
// publishers and the node's acknowledgements are played by the test,
// one of each every quarter of a round for three rounds.
func TestFlowWaitGoesOnWhileAcknowledged(t *testing.T) {
	const wait = time.Second // the default
	a := startNodeWith(t, Options{Node: "k1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: wait})
	b := startNodeWith(t, Options{Node: "k2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: wait})
	waitMesh(t, []*testNode{a, b})
	var got inbox
	sub := testmqtt.Client(t, b.addr, "prog-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("prog/#", 1, nil))
	waitRoute(t, a, b, "prog/x")
	// A window of 2, full: two messages of other publishers outstanding.
	w := (*a.node.peers.Load())["k2"].win
	w.mu.Lock()
	w.count = 2
	w.sent = w.acked + 2
	w.mu.Unlock()
	ack := func(seq uint64) {
		w.mu.Lock()
		m := &nats.Msg{Data: []byte(fmt.Sprintf(`{"node":"k2","stream":%q,"seq":%d,"bytes":%d}`, w.stream, seq, w.ackedBytes))}
		w.mu.Unlock()
		a.node.onAck(m)
	}
	pub := testmqtt.Client(t, a.addr, "prog-pub", true, false, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("prog/x", 1, false, "waits")) // acknowledged, then held
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 1 {
			return fmt.Errorf("%v publishers held back, want 1", v)
		}
		return nil
	})
	tick := time.NewTicker(wait / 4)
	defer tick.Stop()
	for range 12 {
		<-tick.C
		w.mu.Lock()
		w.sent++ // another publisher's message
		seq := w.acked + 1
		w.mu.Unlock()
		ack(seq) // the node took in the oldest
		if got := len(got.all()); got != 0 {
			t.Fatalf("%d messages delivered while the window stayed full: sent past it", got)
		}
	}
	if v := testmqtt.Counter(t, a.node.m.flowTimeouts); v != 0 {
		t.Fatalf("%v waits timed out while the node kept acknowledging", v)
	}
	w.mu.Lock()
	all := w.sent
	w.mu.Unlock()
	ack(all) // the node has taken in everything: room
	got.waitN(t, 1)
	if v := testmqtt.Counter(t, a.node.m.flowTimeouts); v != 0 {
		t.Fatalf("%v waits timed out while the node kept acknowledging", v)
	}
}

// TestFlowWaitGoesOnWhileTakingIn: a publisher whose window towards a
// node is full, and whose messages the node has not reached (its bus
// reader is behind, reading another node's window first: it hears
// nothing of its own stream for longer than a round), waits another
// round while that node says it is taking in, instead of taking it for
// stuck and sending past the window (which lets the NATS server's
// pending bytes for that node outgrow max_pending: it then closes the
// node's connection, losing all it held; TestBusSlowReaderWithinMaxPending).
// Here t1's window towards t3 is full of messages t3 never acknowledges
// (as if they waited behind), while t2's client publishes to t3's
// subscriber ten times a round for three rounds. (Without the notices
// the wait timed out after one round.)
func TestFlowWaitGoesOnWhileTakingIn(t *testing.T) {
	const wait = time.Second // the default
	a := startNodeWith(t, Options{Node: "t1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: wait})
	b := startNodeWith(t, Options{Node: "t2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: wait})
	c := startNodeWith(t, Options{Node: "t3", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: wait})
	waitMesh(t, []*testNode{a, b, c})
	var got inbox
	sub := testmqtt.Client(t, c.addr, "taking-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("taking/#", 1, nil))
	waitRoute(t, a, c, "taking/x")
	waitRoute(t, b, c, "taking/x")
	w := (*a.node.peers.Load())["t3"].win
	w.mu.Lock()
	w.count = 2
	w.sent = w.acked + 2
	w.mu.Unlock()
	pub := testmqtt.Client(t, a.addr, "taking-pub", true, false, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("taking/x", 1, false, "waits")) // acknowledged, then held
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 1 {
			return fmt.Errorf("%v publishers held back, want 1", v)
		}
		return nil
	})
	other := testmqtt.Client(t, b.addr, "taking-other", true, false, nil)
	tick := time.NewTicker(wait / 10)
	defer tick.Stop()
	for i := range 30 {
		<-tick.C
		testmqtt.WaitToken(t, "other publish", other.Publish("taking/y", 1, false, fmt.Sprint(i)))
	}
	got.waitN(t, 30) // t3 took in t2's messages
	for _, m := range got.all() {
		if m.Topic() == "taking/x" {
			t.Fatalf("t1's message delivered while its window stayed full: sent past it")
		}
	}
	if v := testmqtt.Counter(t, a.node.m.flowTimeouts); v != 0 {
		t.Fatalf("%v waits timed out while t3 was taking in", v)
	}
	w.mu.Lock()
	m := &nats.Msg{Data: []byte(fmt.Sprintf(`{"node":"t3","stream":%q,"seq":%d,"bytes":%d}`, w.stream, w.sent, w.sentBytes))}
	w.mu.Unlock()
	a.node.onAck(m) // t3 reached them: room
	got.waitN(t, 31)
}

// TestFlowAcknowledged: a message sent when the window is half used asks
// for a prompt acknowledgement, and the receiving node's acknowledgement
// frees the window.
func TestFlowAcknowledged(t *testing.T) {
	a := startNodeWith(t, Options{Node: "g1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: 10 * time.Minute})
	b := startNodeWith(t, Options{Node: "g2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: 10 * time.Minute})
	waitMesh(t, []*testNode{a, b})
	var got inbox
	sub := testmqtt.Client(t, b.addr, "ack-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("ack/#", 1, nil))
	waitRoute(t, a, b, "ack/x")
	// Messages lost on the way: the window is full and nothing of it
	// will be acknowledged but what comes next.
	w := (*a.node.peers.Load())["g2"].win
	w.mu.Lock()
	w.sent = flowWindow - 1
	w.mu.Unlock()
	pub := testmqtt.Client(t, a.addr, "ack-pub", true, false, nil)
	for i := range 3 {
		testmqtt.WaitToken(t, "publish", pub.Publish("ack/x", 1, false, fmt.Sprint(i)))
	}
	got.waitN(t, 3)
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.acked < flowWindow { // the later ones need no prompt answer
			return fmt.Errorf("acknowledged %d of %d", w.acked, w.sent)
		}
		return nil
	})
}

// TestFlowWindowsFitNATSPending: every other node's window towards one
// node, full at once, and their durable requests in flight, counted
// twice (the NATS server counts what one write to the node carries until
// the write ends, while the node reads it and the windows refill:
// TestBusSlowReaderWithinMaxPending), fit in what the server holds for
// that node's connection before it closes it as a slow consumer (losing
// it all), with a quarter of it left for acknowledgements, answers and
// beats; so with three nodes a window holding 10 MiB holds the next
// publisher back, where the 20 MiB of before let it go.
func TestFlowWindowsFitNATSPending(t *testing.T) {
	for peers := 1; peers <= 64; peers++ {
		all := (windowBytes(peers) + durableBytes(peers)) * uint64(peers)
		if 2*all > natsMaxPending*3/4 || windowBytes(peers) == 0 || durableBytes(peers) == 0 {
			t.Fatalf("%d other nodes: windows of %d bytes and durable requests of %d hold %d together, counted twice %d (NATS holds %d)",
				peers, windowBytes(peers), durableBytes(peers), all, 2*all, natsMaxPending)
		}
	}
	a := startNodeWith(t, Options{Node: "p1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: 10 * time.Minute})
	b := startNodeWith(t, Options{Node: "p2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: 10 * time.Minute})
	c := startNodeWith(t, Options{Node: "p3", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: 10 * time.Minute})
	waitMesh(t, []*testNode{a, b, c})
	sub := testmqtt.Client(t, b.addr, "pending-sub", true, false, func(m paho.Message) {})
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("pending/#", 1, nil))
	waitRoute(t, a, b, "pending/x")
	// 10 MiB outstanding towards p2, nothing of it acknowledged.
	w := (*a.node.peers.Load())["p2"].win
	w.mu.Lock()
	w.sent, w.sentBytes = 1, windowBytes(2)
	w.mu.Unlock()
	if windowBytes(2) >= windowBytes(1) {
		t.Fatalf("a window with two other nodes holds %d bytes, as much as with one", windowBytes(2))
	}
	pub := testmqtt.Client(t, a.addr, "pending-pub", true, false, nil)
	testmqtt.WaitToken(t, "first publish", pub.Publish("pending/x", 1, false, "held")) // acknowledged, then held
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 1 {
			return fmt.Errorf("%v publishers held back, want 1", v)
		}
		return nil
	})
}

// TestFlowDurableRoom: a QoS 1 message for a persistent session on
// another node goes there before its PUBACK as a request of its own, not
// through the window; the requests in flight to a node hold at most
// durableBytes. A publisher whose request finds no room waits for it,
// and goes durable when a request in flight is answered; one that finds
// none within durableWait is acknowledged all the same, counted as not
// durable, and its message still arrives, once, through the window.
func TestFlowDurableRoom(t *testing.T) {
	a := startNodeWith(t, Options{Node: "d1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: 10 * time.Minute})
	b := startNodeWith(t, Options{Node: "d2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: 10 * time.Minute})
	committed := make(chan struct{})
	close(committed) // the session store commits at once
	for _, n := range []*testNode{a, b} {
		n.node.SetDurability(Durability{
			Persistent: func(cl *mqtt.Client) bool { return strings.HasPrefix(cl.ID, "dur-") },
			Barrier:    func() <-chan struct{} { return committed },
		})
	}
	waitMesh(t, []*testNode{a, b})
	var got inbox
	sub := testmqtt.Client(t, b.addr, "dur-sub", false, true, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("dur/#", 1, nil))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if p := (*a.node.peers.Load())["d2"]; p == nil || p.dur == nil || !p.dur.matches("dur/x") {
			return fmt.Errorf("d1 does not know d2's persistent session yet")
		}
		return nil
	})
	w := (*a.node.peers.Load())["d2"].win
	full := durableBytes(1)
	w.mu.Lock()
	w.durable = full // as if requests holding all the room were in flight
	w.mu.Unlock()
	pub := testmqtt.Client(t, a.addr, "room-pub", true, true, nil)

	held := pub.Publish("dur/x", 1, false, "held")
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 1 {
			return fmt.Errorf("%v publishers held back, want 1", v)
		}
		return nil
	})
	if held.WaitTimeout(0) {
		t.Fatal("acknowledged while its request found no room")
	}
	w.releaseDurable(full) // the requests in flight are answered
	testmqtt.WaitToken(t, "publish once there is room", held)
	got.waitN(t, 1)
	if v := testmqtt.Counter(t, a.node.m.notDurable); v != 0 {
		t.Fatalf("%v messages not durable before their PUBACK, want 0", v)
	}

	w.mu.Lock()
	w.durable = full
	w.mu.Unlock()
	testmqtt.WaitToken(t, "publish that finds no room", pub.Publish("dur/x", 1, false, "late"))
	if v := testmqtt.Counter(t, a.node.m.notDurable); v != 1 {
		t.Fatalf("%v messages not durable before their PUBACK, want 1", v)
	}
	if v := testmqtt.Counter(t, a.node.FlowWaitsCounter()); v != 2 {
		t.Fatalf("%v publishers held back, want 2", v)
	}
	msgs := got.waitN(t, 2)
	var payloads []string
	for _, m := range msgs {
		payloads = append(payloads, string(m.Payload()))
	}
	if len(payloads) != 2 || payloads[0] != "held" || payloads[1] != "late" {
		t.Fatalf("the session received %q, want [held late]", payloads)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.durable != full {
		t.Fatalf("%d bytes of room held after the requests, want the %d the test took", w.durable, full)
	}
}

// bpStatus is what the backpressure hook counts.
func bpStatus(t *testing.T, bp *broker.Backpressure) string {
	reg := prometheus.NewRegistry()
	reg.MustRegister(bp)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		out = append(out, fmt.Sprintf("%s %v", strings.TrimPrefix(mf.GetName(), "tether_backpressure_"), mf.GetMetric()[0].GetCounter().GetValue()))
	}
	return strings.Join(out, ", ")
}

// TestDurableNoResponders: a QoS 1 message for a persistent session on a
// node that has vanished from the bus (killed: its subscriptions are
// gone, the others not yet forgotten it) gets no responders at once. It is
// acknowledged, not committed anywhere: counted as not durable. (A
// killed node's 1,250 such messages counted 1, the one in flight.)
func TestDurableNoResponders(t *testing.T) {
	a := startNodeWith(t, Options{Node: "v1", Listen: "127.0.0.1:0", Secret: testSecret})
	b := startNodeWith(t, Options{Node: "v2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret})
	committed := make(chan struct{})
	close(committed)
	for _, n := range []*testNode{a, b} {
		n.node.SetDurability(Durability{
			Persistent: func(cl *mqtt.Client) bool { return strings.HasPrefix(cl.ID, "dur-") },
			Barrier:    func() <-chan struct{} { return committed },
		})
	}
	waitMesh(t, []*testNode{a, b})
	sub := testmqtt.Client(t, b.addr, "dur-sub", false, true, nil)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("dur/#", 1, nil))
	knows := func() error {
		if p := (*a.node.peers.Load())["v2"]; p == nil || p.dur == nil || !p.dur.matches("dur/x") {
			return fmt.Errorf("v1 does not know v2's persistent session")
		}
		return nil
	}
	testmqtt.CheckFor(t, 10*time.Second, knows)
	b.node.unsubscribe() // as if killed: nothing of v2 answers on the bus
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if _, err := a.node.nc.Request(subjMsg+"v2", nil, 200*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("a request to v2: %v, want no responders", err)
		}
		return nil
	})
	if err := knows(); err != nil {
		t.Fatalf("%v: forgotten already, the test needs it still known", err)
	}
	pub := testmqtt.Client(t, a.addr, "vanish-pub", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("dur/x", 1, false, "lost"))
	if v := testmqtt.Counter(t, a.node.m.notDurable); v != 1 {
		t.Fatalf("%v messages not durable before their PUBACK, want 1", v)
	}
}
