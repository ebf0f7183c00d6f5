package cluster

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestRedacted: the log never shows an external NATS's password.
func TestRedacted(t *testing.T) {
	got := redacted("nats://tether:s3cret-pass@n1:4222, tls://n2:4222")
	if strings.Contains(got, "s3cret-pass") || !strings.Contains(got, "n1:4222") || !strings.Contains(got, "tls://n2:4222") {
		t.Fatalf("redacted: %s", got)
	}
}

// TestBusSlowReaderKeepsConnection: a node whose bus reader is slow (the
// process starved of CPU: under the race detector at load average 14,
// 28 MB took it over 10 s) keeps its bus connection while it reads,
// however long the embedded server's write to it takes, and every
// acknowledged message arrives. (The server used to close it as a slow
// consumer once one write outlasted its write deadline, losing what it
// held: TestClusterFlowControl lost 230 and 289 of 2,000 messages so.)
// The deadline is lowered here to 1 s and the reader throttled to about
// 1.6 MB/s, so that 12 MiB take several deadlines.
func TestBusSlowReaderKeepsConnection(t *testing.T) {
	a := startNodeWith(t, Options{Node: "r1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: time.Second})
	b := startNodeWith(t, Options{Node: "r2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: time.Second,
		writeDeadline: time.Second, busConn: func(c net.Conn) net.Conn { return &slowReader{Conn: c} }})
	waitMesh(t, []*testNode{a, b})
	var got inbox
	sub := testmqtt.Client(t, b.addr, "slow-bus-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("slowbus/#", 1, nil))
	waitRoute(t, a, b, "slowbus/x")
	pub := testmqtt.Client(t, a.addr, "slow-bus-pub", true, false, nil)
	const n = 12
	var toks []paho.Token
	for i := range n {
		toks = append(toks, pub.Publish("slowbus/x", 1, false, make([]byte, 1<<20-i)))
	}
	for _, tok := range toks {
		testmqtt.WaitToken(t, "publish", tok)
	}
	testmqtt.CheckFor(t, 60*time.Second, func() error {
		if c := len(got.all()); c < n {
			return fmt.Errorf("%d of %d acknowledged messages delivered (r2's bus connection lost %v times)", c, n, b.node.BusLost())
		}
		return nil
	})
	if l := b.node.BusLost(); l != 0 {
		t.Errorf("r2's bus connection was lost %v times while it read", l)
	}
}

// TestBusSlowReaderWithinMaxPending: two nodes send large messages as
// fast as their windows let them to a third whose bus reader is slow (the
// process starved of CPU). The NATS server counts what one write to the
// node carries as pending until the whole write ends, while the node,
// reading it, acknowledges and the windows refill: it can count twice
// what the windows and durable requests hold. Counted so, it stays below
// max_pending: the server never closes the node's connection as a slow
// consumer (which loses what it held) and every acknowledged message
// arrives. With 40 MiB of windows towards one node, as before, the
// server counted up to 64 MiB and closed it (every run, 5: 198 to 256 of
// 384 delivered; TestClusterFlowControl at the default wait lost 142 to
// 295 of 2,000 messages so in 3 of 4 runs at load 12-14). The reader
// takes 16 KiB each 500 µs at most; under the race detector on a loaded
// machine the node reads a few MB a second, so that one write of the
// windows takes seconds, and a node's messages behind another's window
// wait longer than a round for an acknowledgement (the node's notices
// that it is taking in keep their publishers waiting).
func TestBusSlowReaderWithinMaxPending(t *testing.T) {
	a := startNodeWith(t, Options{Node: "m1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: time.Second})
	b := startNodeWith(t, Options{Node: "m2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: time.Second})
	c := startNodeWith(t, Options{Node: "m3", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: time.Second,
		busConn: func(c net.Conn) net.Conn { return &slowReader{Conn: c, every: 500 * time.Microsecond} }})
	waitMesh(t, []*testNode{a, b, c})
	var got inbox
	sub := testmqtt.Client(t, c.addr, "pending-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("pending/#", 1, nil))
	waitRoute(t, a, c, "pending/x")
	waitRoute(t, b, c, "pending/x")

	// The most the server counted as pending for m3's connection.
	var peak atomic.Int64
	done := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			if cz, err := c.node.ns.Connz(nil); err == nil {
				for _, ci := range cz.Conns {
					if int64(ci.Pending) > peak.Load() {
						peak.Store(int64(ci.Pending))
					}
				}
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	// 96 MiB from 6 publishers on two nodes, 256 KiB a message.
	const publishers, each, size = 6, 64, 256 << 10
	var toks []paho.Token
	for i := range publishers {
		pub := testmqtt.Client(t, []*testNode{a, b}[i%2].addr, fmt.Sprintf("pending-pub-%d", i), true, false, nil)
		for j := range each {
			buf := make([]byte, size)
			binary.BigEndian.PutUint64(buf, uint64(i*each+j))
			toks = append(toks, pub.Publish(fmt.Sprintf("pending/%d", i), 1, false, buf))
		}
	}
	for _, tok := range toks {
		testmqtt.WaitToken(t, "publish", tok)
	}
	status := func() string {
		return fmt.Sprintf("m3's bus connection lost %v times; the server counted up to %d bytes pending for it, max_pending %d; flow waits timed out %v, %v",
			c.node.BusLost(), peak.Load(), natsMaxPending, testmqtt.Counter(t, a.node.m.flowTimeouts), testmqtt.Counter(t, b.node.m.flowTimeouts))
	}
	testmqtt.CheckFor(t, 60*time.Second, func() error {
		seen := map[uint64]bool{}
		for _, m := range got.all() {
			seen[binary.BigEndian.Uint64(m.Payload())] = true
		}
		if len(seen) < len(toks) {
			return fmt.Errorf("%d of %d acknowledged messages delivered (%s)", len(seen), len(toks), status())
		}
		return nil
	})
	close(done)
	<-polled
	if c.node.BusLost() != 0 {
		t.Errorf("%s", status())
	}
	t.Logf("%s", status())
}

// slowReader reads at most 16 KiB each 10 ms, or each every.
type slowReader struct {
	net.Conn
	every time.Duration
}

func (c *slowReader) Read(p []byte) (int, error) {
	time.Sleep(cmp.Or(c.every, 10*time.Millisecond))
	return c.Conn.Read(p[:min(len(p), 16<<10)])
}

// TestBusSlowReaderForgetsNobody: a node whose bus reader is behind (the
// NATS server holds a window of messages for it, 20 MiB, which its
// reader, throttled to about 1.6 MB/s, takes some 13 s to read: as the
// receiving node of TestClusterFlowControl under the race detector at
// load 16, whose beats from the others took up to 16 s to reach it) hears
// the other node's beats only after them, and does not take it for gone
// meanwhile (caughtUp): it used to (for 6 s), as if the other had died,
// and so would take over its sessions (a shared session store).
func TestBusSlowReaderForgetsNobody(t *testing.T) {
	a := startNodeWith(t, Options{Node: "s1", Listen: "127.0.0.1:0", Secret: testSecret, FlowWait: time.Second})
	b := startNodeWith(t, Options{Node: "s2", Listen: "127.0.0.1:0", Peers: []string{a.node.RouteAddr()}, Secret: testSecret, FlowWait: time.Second,
		busConn: func(c net.Conn) net.Conn { return &slowReader{Conn: c} }})
	waitMesh(t, []*testNode{a, b})
	var gone atomic.Int64
	b.node.SetNodeGone(func(string) { gone.Add(1) })
	var got inbox
	sub := testmqtt.Client(t, b.addr, "forget-sub", true, false, got.add)
	testmqtt.WaitToken(t, "subscribe", sub.Subscribe("forget/#", 1, nil))
	waitRoute(t, a, b, "forget/x")
	pub := testmqtt.Client(t, a.addr, "forget-pub", true, false, nil)
	// 24 MiB: the window (20 MiB) full, and some waiting for room.
	const n, size = 48, 512 << 10
	var toks []paho.Token
	for i := range n {
		buf := make([]byte, size)
		binary.BigEndian.PutUint64(buf, uint64(i))
		toks = append(toks, pub.Publish("forget/x", 1, false, buf))
	}
	for _, tok := range toks {
		testmqtt.WaitTokenFor(t, "publish", tok, 60*time.Second)
	}
	testmqtt.CheckFor(t, 90*time.Second, func() error {
		if c := len(got.all()); c < n {
			return fmt.Errorf("%d of %d acknowledged messages delivered (s2 took s1 for gone %d times)", c, n, gone.Load())
		}
		return nil
	})
	if g := gone.Load(); g != 0 {
		t.Errorf("s2, its bus reader behind, took s1 for gone %d times", g)
	}
	if l := testmqtt.Counter(t, b.node.m.dropped.WithLabelValues("lost")); l != 0 {
		t.Errorf("messages counted as lost: %v", l)
	}
}
