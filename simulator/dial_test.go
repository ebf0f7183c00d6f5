package simulator

import (
	"bytes"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// countingConn counts the reads of its connection.
type countingConn struct {
	net.Conn
	reads atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

// TestTCPReadsBuffered: a burst of small packets over TCP is read by
// paho's packet reader in a few reads of the socket, not three a packet,
// and every packet arrives whole.
func TestTCPReadsBuffered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 100
	var burst bytes.Buffer
	for i := range n {
		pk := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pk.TopicName = "fleet/d/telemetry"
		pk.Payload = fmt.Appendf(nil, `{"seq":%d}`, i)
		if err := pk.Write(&burst); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write(burst.Bytes())
		_, _ = c.Read(make([]byte, 1)) // until the client closes
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cc := &countingConn{Conn: raw}
	conn := readBuffered(cc)
	for i := range n {
		cp, err := packets.ReadPacket(conn)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		pk, ok := cp.(*packets.PublishPacket)
		if !ok || string(pk.Payload) != fmt.Sprintf(`{"seq":%d}`, i) {
			t.Fatalf("packet %d: %v", i, cp)
		}
	}
	// A 2 KiB buffer holds about 70 of these 29-byte packets: the burst
	// is two or three reads however TCP splits it, against 300 unbuffered.
	if r := cc.reads.Load(); r > 20 {
		t.Errorf("%d reads of the socket for %d packets", r, n)
	}
}
