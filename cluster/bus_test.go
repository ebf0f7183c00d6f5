package cluster

import (
	"fmt"
	"net"
	"strings"
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

// slowReader reads at most 16 KiB each 10 ms.
type slowReader struct{ net.Conn }

func (c *slowReader) Read(p []byte) (int, error) {
	time.Sleep(10 * time.Millisecond)
	return c.Conn.Read(p[:min(len(p), 16<<10)])
}
