package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// rawSubscriber connects a 3.1.1 client that subscribes to filter at
// QoS 0 and does not read until told to. (Its receive buffer is left as
// it is: shrunk after connecting, Linux drops what the window advertised
// and the sender's retransmissions back off for seconds.)
func rawSubscriber(t *testing.T, addr, id, filter string) net.Conn {
	t.Helper()
	c, first, _ := dialConnect(t, addr, 4, id)
	if first != 0x20 {
		t.Fatalf("CONNACK %#x", first)
	}
	var sub []byte
	sub = append(sub, 0, 1) // packet id
	sub = binary.BigEndian.AppendUint16(sub, uint16(len(filter)))
	sub = append(sub, filter...)
	sub = append(sub, 0) // QoS 0
	if _, err := c.Write(append([]byte{0x82, byte(len(sub))}, sub...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 5)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x90 || ack[4] != 0 {
		t.Fatalf("SUBACK %x %v", ack, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// readPublishes reads QoS 0 PUBLISH packets from r and returns their
// payloads' sequence numbers (the payload's text up to the first space).
func readPublishes(r *bufio.Reader, n int) ([]int, error) {
	seqs := make([]int, 0, n)
	for len(seqs) < n {
		h, err := r.ReadByte()
		if err != nil {
			return seqs, err
		}
		length, err := binary.ReadUvarint(r)
		if err != nil {
			return seqs, err
		}
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return seqs, err
		}
		if h&0xf0 != 0x30 {
			return seqs, fmt.Errorf("packet %#x, want PUBLISH", h)
		}
		payload := string(body[2+int(binary.BigEndian.Uint16(body)):])
		var seq int
		if _, err := fmt.Sscanf(payload, "%d ", &seq); err != nil {
			return seqs, fmt.Errorf("payload %.20q: %v", payload, err)
		}
		seqs = append(seqs, seq)
	}
	return seqs, nil
}

// A QoS 0 subscriber that stops reading while a publisher sends far more
// than its send queue (256) and the sockets hold: the publisher is slowed
// down instead of the engine dropping messages, and once the subscriber
// reads again it gets every message, in order.
func TestBackpressureQoS0NothingDropped(t *testing.T) {
	b, bp := startBackpressureBroker(t, 10*time.Second)
	qos0NothingDropped(t, b, bp)
}

// The same with the subscriber's writer held for a moment (as a loaded
// machine may) after each PUBLISH it writes while a publisher waits for
// its queue: the publisher, let go, must not overtake what was queued
// before its message. (Before, it was let go once as many packets had
// been written as the queue holds, one short of what was unwritten with
// the packet the writer held, and wrote its message itself: it went out
// before the queue's last packet; one out of order in about 40 runs at
// load average 9, at every release with the writer held.)
func TestBackpressureQoS0OrderWithWriterPaused(t *testing.T) {
	b, bp := startBackpressureBroker(t, 10*time.Second)
	pause := &writerPause{id: "slow", bp: bp}
	if err := b.Server.AddHook(pause, nil); err != nil {
		t.Fatal(err)
	}
	qos0NothingDropped(t, b, bp)
	if pause.paused.Load() == 0 {
		t.Error("the writer was never held while a publisher waited")
	}
}

// writerPause holds client id's writer for a moment after each PUBLISH it
// writes while a publisher is held back (a wait counted, not yet
// delivered or timed out).
type writerPause struct {
	mqtt.HookBase
	id     string
	bp     *Backpressure
	paused atomic.Int64
}

func (h *writerPause) ID() string { return "test-writer-pause" }

func (h *writerPause) Provides(e byte) bool { return e == mqtt.OnPacketSent }

func (h *writerPause) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if cl.ID != h.id || pk.FixedHeader.Type != packets.Publish {
		return
	}
	if value(h.bp.waits) <= value(h.bp.delivered)+value(h.bp.timeouts) {
		return
	}
	h.paused.Add(1)
	time.Sleep(2 * time.Millisecond)
}

// value is c's value (testCounter without a test: hooks run on the
// engine's goroutines).
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// qos0NothingDropped has a raw QoS 0 subscriber that does not read until
// a publisher of 3,000 messages of 8 KiB has been held back for it, and
// then reads them all: each arrives once, in order, none dropped.
func qos0NothingDropped(t *testing.T, b *Broker, bp *Backpressure) {
	t.Helper()
	addr := b.TCP.Address()
	sub := rawSubscriber(t, addr, "slow", "q0/#")

	const n = 3000
	pad := strings.Repeat("x", 8<<10) // 24 MB in all: more than loopback's socket buffers hold
	pub := storeClient(t, addr, "pub", true, nil)
	var published atomic.Int64
	go func() {
		for i := range n {
			pub.Publish("q0/a", 0, false, fmt.Sprintf("%d %s", i, pad)).Wait()
			published.Add(1)
		}
	}()
	checkFor(t, 30*time.Second, func() error {
		if testCounter(t, bp.waits) == 0 {
			return fmt.Errorf("the publisher has not been held back yet (%d published)", published.Load())
		}
		return nil
	})
	sub.SetReadDeadline(time.Now().Add(60 * time.Second))
	seqs, err := readPublishes(bufio.NewReader(sub), n)
	if err != nil {
		t.Fatalf("after %d messages: %v", len(seqs), err)
	}
	for i, s := range seqs {
		if s != i {
			t.Fatalf("message %d has sequence %d: lost or out of order (%v...)", i, s, seqs[max(0, i-3):min(len(seqs), i+3)])
		}
	}
	if d := atomic.LoadInt64(&b.Server.Info.MessagesDropped); d != 0 {
		t.Errorf("engine counted %d messages dropped", d)
	}
	// Counted once written, which the subscriber may see first.
	checkFor(t, 10*time.Second, func() error {
		if s := atomic.LoadInt64(&b.Server.Info.MessagesSent); s < n {
			return fmt.Errorf("engine counted %d messages sent", s)
		}
		return nil
	})
	if s := atomic.LoadInt64(&b.Server.Info.MessagesSent); s != n {
		t.Errorf("engine counted %d messages sent, want %d", s, n)
	}
	if testCounter(t, bp.delivered) == 0 {
		t.Error("no message went through the QoS 0 wait")
	}
	if to := testCounter(t, bp.timeouts); to != 0 {
		t.Errorf("%v waits timed out", to)
	}
}

// A QoS 0 subscriber that never reads costs a publisher at most one wait:
// then it is marked stuck and its messages are dropped as before, and the
// publisher goes on.
func TestBackpressureQoS0StuckSubscriber(t *testing.T) {
	b, bp := startBackpressureBroker(t, 200*time.Millisecond)
	addr := b.TCP.Address()
	rawSubscriber(t, addr, "stuck", "q0/#")
	var got received
	live := storeClient(t, addr, "live", true, got.add)
	waitToken(t, "subscribe", live.Subscribe("q0/#", 0, nil))

	const n = 2000
	pad := strings.Repeat("x", 8<<10)
	pub := storeClient(t, addr, "pub", true, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			pub.Publish("q0/a", 0, false, fmt.Sprintf("%d %s", i, pad)).Wait()
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the publisher was held back for good by a subscriber that never reads")
	}
	if testCounter(t, bp.timeouts) == 0 {
		t.Error("no wait timed out for a subscriber that never reads")
	}
	if atomic.LoadInt64(&b.Server.Info.MessagesDropped) == 0 {
		t.Error("nothing dropped for a subscriber that never reads")
	}
	var _ paho3.Client = pub
}
