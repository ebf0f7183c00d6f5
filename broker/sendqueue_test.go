package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// startSendQueueBroker starts a broker at the defaults (Backpressure
// included, as tether runs it), with tune applied, and returns it with
// its address.
func startSendQueueBroker(t *testing.T, tune ...func(*Options)) (*Broker, string) {
	t.Helper()
	b, _ := startBackpressureBroker(t, time.Second, tune...)
	if b.sendq == nil {
		t.Fatal("no send queue bound at the defaults")
	}
	return b, b.TCP.Address()
}

// stuckViewer connects a 3.1.1 client subscribed at QoS 0 to filter that
// never reads; clean=false makes its session persistent.
func stuckViewer(t *testing.T, addr, id, filter string, clean bool) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	pk := connectPacket(4, id)
	if !clean {
		pk[2+2+4+1] = 0 // the connect flags: no clean session
	}
	var sub []byte
	sub = append(sub, 0, 1) // packet id
	sub = binary.BigEndian.AppendUint16(sub, uint16(len(filter)))
	sub = append(sub, filter...)
	sub = append(sub, 0) // QoS 0
	if _, err := c.Write(append(pk, append([]byte{0x82, byte(len(sub))}, sub...)...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4+5) // CONNACK, SUBACK
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 || ack[8] != 0 {
		t.Fatalf("CONNACK, SUBACK %x %v", ack, err)
	}
	return c // from here on it reads nothing
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// routedUpTo publishes a small marker after what pub published, on the
// same connection, and waits until a probe has it: the broker has routed
// all that came before it.
func routedUpTo(t *testing.T, addr string, publish func(topic string, payload []byte)) {
	t.Helper()
	got := make(chan struct{}, 1)
	probe := storeClient(t, addr, fmt.Sprintf("probe-%d", time.Now().UnixNano()), true, func(paho.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	})
	waitToken(t, "subscribe", probe.Subscribe("end/marker", 0, nil))
	publish("end/marker", []byte("end"))
	select {
	case <-got:
	case <-time.After(3 * time.Minute):
		t.Fatal("the marker published after the messages never arrived")
	}
	probe.Disconnect(0)
}

func (b *Broker) queuedBytes() int64 { return b.sendq.bytes.Load() }

// clientQueuedBytes is what the send queue counts for the client id.
func (b *Broker) clientQueuedBytes(id string) int64 {
	var n int64
	b.sendq.clients.Range(func(k, v any) bool {
		if k.(*mqtt.Client).ID == id {
			c := v.(*queueBytes)
			c.mu.Lock()
			n = c.n
			c.mu.Unlock()
		}
		return true
	})
	return n
}

// Ten viewers subscribed at QoS 0 that read nothing, and a device
// publishing messages of 1 MB: each viewer's send queue held 256 of them,
// each its own copy (the heap went to 3.2 GB in 25 s). Now each holds
// at most mqtt.client_queue_bytes (8 MiB), sharing the payload, and the
// rest is dropped for them (counted), while a subscriber that reads gets
// everything.
func TestSendQueueBytesStuckViewers(t *testing.T) {
	b, addr := startSendQueueBroker(t, func(o *Options) {
		// The viewers stay connected while the heap is measured: the
		// bound under test holds without limits.write_timeout's help.
		o.WriteTimeout = 10 * time.Minute
	})
	const viewers, n, size = 10, 64, 1_000_000
	for i := range viewers {
		stuckViewer(t, addr, fmt.Sprintf("viewer-%d", i), "big/#", true)
	}
	var got atomic.Int64
	reader := storeClient(t, addr, "reader", true, callback(func(m []byte) {
		if len(m) == size {
			got.Add(1)
		}
	}))
	waitToken(t, "subscribe", reader.Subscribe("big/#", 0, nil))

	base := liveHeap()
	pub := storeClient(t, addr, "device", true, nil)
	payload := bytes.Repeat([]byte{'x'}, size)
	publish := func(topic string, p []byte) { waitToken(t, "publish", pub.Publish(topic, 0, false, p)) }
	for range n {
		publish("big/frame", payload)
	}
	routedUpTo(t, addr, publish)

	live := liveHeap()
	grew := int64(live) - int64(base)
	t.Logf("live heap %d MB before, %d MB after (+%d MB); %d bytes queued, %d dropped", base>>20, live>>20, grew>>20,
		b.queuedBytes(), b.sendq.Dropped(dropClientBytes))
	for i := range viewers {
		id := fmt.Sprintf("viewer-%d", i)
		if cl, ok := b.Server.Clients.Get(id); !ok || cl.Closed() {
			t.Fatalf("%s was dropped before the measurement", id)
		}
		if q := b.clientQueuedBytes(id); q <= 0 || q > 8<<20 {
			t.Errorf("%s's send queue counts %d bytes, want some and at most 8 MiB", id, q)
		}
	}
	// Ten queues of 8 MiB, the message each viewer's writer holds (its
	// packet and its encoding), and room for the rest.
	if limit := int64(viewers*8<<20 + 64<<20); grew > limit {
		t.Errorf("the live heap grew by %d MB with %d viewers that read nothing, want at most %d MB", grew>>20, viewers, limit>>20)
	}
	if d := b.sendq.Dropped(dropClientBytes); d == 0 {
		t.Error("nothing dropped for mqtt.client_queue_bytes")
	}
	checkFor(t, time.Minute, func() error {
		if k := got.Load(); k != n {
			return fmt.Errorf("the reading subscriber got %d of %d messages", k, n)
		}
		return nil
	})
}

// callback adapts a payload function to paho's message handler.
func callback(f func([]byte)) func(paho.Message) { return func(m paho.Message) { f(m.Payload()) } }

// v5Subscriber connects an MQTT 5 client that takes aliasMax topic
// aliases and subscribes at QoS 0 to filter.
func v5Subscriber(t *testing.T, addr, id, filter string, aliasMax uint16) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: id},
		Properties: packets.Properties{TopicAliasMaximum: aliasMax}}
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []byte{packets.Connack, packets.Suback} {
		if pk, err := readPacket5(r); err != nil || pk.FixedHeader.Type != want {
			t.Fatalf("want packet type %d, got %d: %v", want, pk.FixedHeader.Type, err)
		}
	}
	c.SetReadDeadline(time.Time{})
	return c, r
}

// readPacket5 reads one MQTT 5 packet, decoding a PUBLISH.
func readPacket5(r *bufio.Reader) (packets.Packet, error) {
	hb, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	if fh.Type == packets.Publish {
		err = pk.PublishDecode(body)
	}
	return pk, err
}

// A topic alias map (the engine's, per client and direction) kept each
// alias's topic string, which pointed into the buffer of the PUBLISH it
// came with, payload included: a subscriber taking 65,535 aliases pinned
// one message body per topic it was sent, for as long as it stayed
// connected. Now a PUBLISH of 4 KiB or more gets a topic string of its
// own, and a client is sent at most 64 aliases.
func TestTopicAliasesKeepNoBodies(t *testing.T) {
	b, addr := startSendQueueBroker(t)

	// The decoded topic no longer points into the packet's buffer.
	var raw bytes.Buffer
	in := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: "al/own",
		Payload: make([]byte, ownTopicPayload)}
	if err := in.PublishEncode(&raw); err != nil {
		t.Fatal(err)
	}
	rb := bytes.NewReader(raw.Bytes()[1:])
	if _, _, err := packets.DecodeLength(rb); err != nil {
		t.Fatal(err)
	}
	px := raw.Bytes()[len(raw.Bytes())-rb.Len():] // after the fixed header
	dec := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4}
	if err := dec.PublishDecode(px); err != nil {
		t.Fatal(err)
	}
	g := &gate{b: b}
	out := g.read(&mqtt.Client{}, dec)
	p, lo, hi := uintptr(unsafe.Pointer(unsafe.StringData(out.TopicName))), uintptr(unsafe.Pointer(&px[0])), uintptr(unsafe.Pointer(&px[len(px)-1]))
	if out.TopicName != "al/own" || (p >= lo && p <= hi) {
		t.Errorf("a PUBLISH of %d bytes keeps its topic %q inside its buffer", len(px), out.TopicName)
	}

	c, r := v5Subscriber(t, addr, "aliased", "al/#", 65535)
	const topics = 4000
	var (
		mu       sync.Mutex
		seen     int
		maxAlias uint16
		bad      []string
	)
	go func() {
		aliases := map[uint16]string{}
		for {
			pk, err := readPacket5(r)
			if err != nil {
				return
			}
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			topic, a := pk.TopicName, pk.Properties.TopicAlias
			switch {
			case a > 0 && topic != "":
				aliases[a] = topic
			case a > 0:
				topic = aliases[a]
			}
			mu.Lock()
			seen++
			maxAlias = max(maxAlias, a)
			if want, _, _ := strings.Cut(string(pk.Payload[:32]), " "); want != topic {
				bad = append(bad, fmt.Sprintf("%q (alias %d) carried %q's message", topic, a, want))
			}
			mu.Unlock()
		}
	}()
	base := liveHeap()
	pub := storeClient(t, addr, "al-pub", true, nil)
	publish := func(topic string, p []byte) { waitToken(t, "publish", pub.Publish(topic, 0, false, p)) }
	for i := range topics {
		size := 7 << 10 // the engine's own delivery
		if i%2 == 1 {
			size = 16 << 10 // the send queue's
		}
		topic := fmt.Sprintf("al/%d", i)
		payload := bytes.Repeat([]byte{'.'}, size)
		copy(payload, topic+" ")
		publish(topic, payload)
	}
	routedUpTo(t, addr, publish)
	checkFor(t, time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if seen < topics {
			return fmt.Errorf("the subscriber got %d of %d messages", seen, topics)
		}
		return nil
	})
	live := liveHeap()
	grew := int64(live) - int64(base)
	mu.Lock()
	t.Logf("live heap %d KB before, %d KB after (+%d KB); highest alias %d", base>>10, live>>10, grew>>10, maxAlias)
	if maxAlias > 64 {
		t.Errorf("the subscriber was sent alias %d, want at most 64", maxAlias)
	}
	if maxAlias == 0 {
		t.Error("no alias sent")
	}
	if len(bad) > 0 {
		t.Errorf("%d messages under the wrong topic, first %s", len(bad), bad[0])
	}
	mu.Unlock()
	// 2,000 bodies of 7 KiB pinned by the aliases would be 14 MiB.
	if grew > 6<<20 {
		t.Errorf("the live heap grew by %d KB while the subscriber stays connected, want at most 6 MiB", grew>>10)
	}
	if _, ok := b.Server.Clients.Get("aliased"); !ok {
		t.Fatal("the subscriber was dropped")
	}
	_ = c
}

// captured records log lines, for the tests that count them.
type captured struct {
	mu    sync.Mutex
	lines []slog.Record
}

func (c *captured) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (c *captured) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.lines = append(c.lines, r.Clone())
	c.mu.Unlock()
	return nil
}
func (c *captured) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *captured) WithGroup(string) slog.Handler      { return c }

// dropLogs counts the send queue's drop lines per client.
func (c *captured) dropLogs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := map[string]int{}
	for _, r := range c.lines {
		if !strings.Contains(r.Message, "large QoS 0 message dropped") {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "client" {
				n[a.Value.String()]++
			}
			return true
		})
	}
	return n
}

// All clients' queues together hold at most
// mqtt.client_queue_total_bytes of large QoS 0 messages: three viewers
// that read nothing, each within its own 8 MiB, pass a total of 12 MiB,
// and what is past it is dropped and counted as such, and logged once
// per client.
func TestSendQueueTotalBytes(t *testing.T) {
	logs := &captured{}
	b, addr := startSendQueueBroker(t, func(o *Options) {
		o.ClientQueueTotalBytes = 12 << 20 // the bound under test
		o.WriteTimeout = 10 * time.Minute  // the viewers stay while it is checked
		o.Logger = slog.New(logs)
	})
	const viewers, n, size = 3, 20, 1_000_000
	for i := range viewers {
		stuckViewer(t, addr, fmt.Sprintf("tv-%d", i), "big/#", true)
	}
	pub := storeClient(t, addr, "device", true, nil)
	payload := bytes.Repeat([]byte{'x'}, size)
	publish := func(topic string, p []byte) { waitToken(t, "publish", pub.Publish(topic, 0, false, p)) }
	for range n {
		publish("big/frame", payload)
	}
	routedUpTo(t, addr, publish)
	if q := b.queuedBytes(); q <= 8<<20 || q > 12<<20 {
		t.Errorf("the send queues count %d bytes, want more than one client's 8 MiB and at most 12 MiB", q)
	}
	for i := range viewers {
		if q := b.clientQueuedBytes(fmt.Sprintf("tv-%d", i)); q == 0 {
			t.Errorf("tv-%d has nothing queued", i)
		}
	}
	if d := b.sendq.Dropped(dropTotalBytes); d == 0 {
		t.Error("nothing dropped for mqtt.client_queue_total_bytes")
	}
	if d := b.sendq.Dropped(dropClientBytes); d != 0 {
		t.Errorf("%d dropped for mqtt.client_queue_bytes, which no viewer reached", d)
	}
	// /metrics says which bound dropped them.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(b))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byReason := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "tether_mqtt_messages_dropped_total" {
			for _, m := range mf.GetMetric() {
				byReason[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got, want := byReason["client_queue_total_bytes"], float64(b.sendq.Dropped(dropTotalBytes)); got != want || got == 0 {
		t.Errorf("tether_mqtt_messages_dropped_total{reason=\"client_queue_total_bytes\"} = %v, want %v (all: %v)", got, want, byReason)
	}
	logged := logs.dropLogs()
	if len(logged) == 0 {
		t.Error("no drop logged")
	}
	for id, k := range logged {
		if k > 1 {
			t.Errorf("%s's drops logged %d times within a minute", id, k)
		}
	}
}

// What the send queues count goes back to 0 once the clients are gone,
// and the queue of a persistent session's closed connection, which the
// engine keeps until the session returns or expires, is emptied.
func TestSendQueueBytesNoLeak(t *testing.T) {
	b, addr := startSendQueueBroker(t, func(o *Options) { o.WriteTimeout = 10 * time.Minute })
	conns := []net.Conn{
		stuckViewer(t, addr, "nl-0", "big/#", true),
		stuckViewer(t, addr, "nl-1", "big/#", true),
		stuckViewer(t, addr, "nl-persistent", "big/#", false),
	}
	pub := storeClient(t, addr, "device", true, nil)
	payload := bytes.Repeat([]byte{'x'}, 100_000)
	publish := func(topic string, p []byte) { waitToken(t, "publish", pub.Publish(topic, 0, false, p)) }
	for range 200 {
		publish("big/frame", payload)
	}
	routedUpTo(t, addr, publish)
	if q := b.queuedBytes(); q == 0 {
		t.Fatal("nothing counted for three viewers that read nothing")
	}
	for _, c := range conns {
		c.Close()
	}
	pub.Disconnect(0)
	checkFor(t, time.Minute, func() error {
		if q := b.queuedBytes(); q != 0 {
			return fmt.Errorf("%d bytes still counted after the clients left", q)
		}
		k := 0
		b.sendq.clients.Range(func(any, any) bool { k++; return true })
		if k != 0 {
			return fmt.Errorf("%d clients still counted", k)
		}
		if r := b.sendq.nRoutes.Load(); r != 0 {
			return fmt.Errorf("%d messages still recorded as being routed", r)
		}
		cl, ok := b.Server.Clients.Get("nl-persistent")
		if !ok {
			return fmt.Errorf("the persistent session is gone")
		}
		if !cl.Closed() {
			return fmt.Errorf("the persistent session's connection is still open")
		}
		if n := queueLen(cl); n != 0 {
			return fmt.Errorf("the persistent session's closed connection still holds %d queued packets", n)
		}
		return nil
	})
}

// A subscriber that reads loses nothing to the bounds, however many large
// messages pass through its queue, next to two that read nothing; what it
// gets is whole and in order.
func TestSendQueueBytesHealthySubscriber(t *testing.T) {
	b, addr := startSendQueueBroker(t, func(o *Options) { o.WriteTimeout = 10 * time.Minute })
	stuckViewer(t, addr, "hs-stuck-0", "big/#", true)
	stuckViewer(t, addr, "hs-stuck-1", "big/#", true)
	const n, size = 600, 64 << 10 // 37.5 MiB through a queue of 8 MiB
	var (
		mu   sync.Mutex
		next int
		bad  []string
	)
	reader := testmqttClient(t, addr, "healthy", func(m paho.Message) {
		p := m.Payload()
		mu.Lock()
		defer mu.Unlock()
		want := fmt.Sprintf("%08d", next)
		switch {
		case len(p) != size:
			bad = append(bad, fmt.Sprintf("message %d has %d bytes", next, len(p)))
		case string(p[:8]) != want:
			bad = append(bad, fmt.Sprintf("message %s where %s was due", p[:8], want))
		case bytes.Count(p[8:], []byte{byte('a' + next%26)}) != size-8:
			bad = append(bad, fmt.Sprintf("message %d's body is not its own", next))
		}
		next++
	})
	waitToken(t, "subscribe", reader.Subscribe("big/#", 0, nil))
	pub := storeClient(t, addr, "device", true, nil)
	for i := range n {
		payload := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		copy(payload, fmt.Sprintf("%08d", i))
		waitToken(t, "publish", pub.Publish("big/frame", 0, false, payload))
	}
	checkFor(t, 2*time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if next < n {
			return fmt.Errorf("the reading subscriber got %d of %d messages", next, n)
		}
		return nil
	})
	mu.Lock()
	if len(bad) > 0 {
		t.Errorf("%d messages wrong, first: %s", len(bad), bad[0])
	}
	mu.Unlock()
	if d := b.sendq.Dropped(dropClientBytes); d == 0 {
		t.Error("nothing dropped for the viewers that read nothing")
	}
	checkFor(t, time.Minute, func() error {
		if q := b.clientQueuedBytes("healthy"); q != 0 {
			return fmt.Errorf("the reading subscriber's queue still counts %d bytes", q)
		}
		return nil
	})
}

// testmqttClient is a 3.1.1 client whose messages are handled in order.
func testmqttClient(t *testing.T, addr, id string, onMsg func(paho.Message)) paho.Client {
	t.Helper()
	return testmqtt.Client(t, addr, id, true, true, onMsg)
}

// A large message that finds a viewer's queue full of small ones goes to
// Backpressure, whose own copy shares the payload and is counted while it
// waits for room; when the wait times out it is released: nothing stays
// counted for a message that was never queued.
func TestSendQueueBytesBackpressureCopy(t *testing.T) {
	b, addr := startSendQueueBroker(t, func(o *Options) { o.WriteTimeout = 10 * time.Minute })
	stuckViewer(t, addr, "bp-stuck", "big/#", true)
	var seen atomic.Int64
	probe := storeClient(t, addr, "bp-probe", true, func(paho.Message) { seen.Add(1) })
	waitToken(t, "subscribe", probe.Subscribe("big/#", 0, nil))
	pub := storeClient(t, addr, "device", true, nil)
	publish := func(topic string, p []byte) { waitToken(t, "publish", pub.Publish(topic, 0, false, p)) }
	small := bytes.Repeat([]byte{'s'}, 100)
	// Small messages, one routed at a time, until the viewer's queue is
	// full to the last slot (and Backpressure has not waited for it yet,
	// which would mark it stuck and skip it).
	cl, ok := b.Server.Clients.Get("bp-stuck")
	if !ok {
		t.Fatal("the viewer is gone")
	}
	for queueLen(cl) < cap(queue(cl)) {
		batch := max(1, (cap(queue(cl))-queueLen(cl))/2) // never more than the room left
		want := seen.Load() + int64(batch)
		for range batch {
			publish("big/small", small)
		}
		checkFor(t, time.Minute, func() error {
			if seen.Load() < want {
				return fmt.Errorf("the probe has %d of %d messages", seen.Load(), want)
			}
			return nil
		})
	}
	waits := testCounter(t, b.sendqBackpressure().waits)
	publish("big/large", bytes.Repeat([]byte{'L'}, 16<<10))
	routedUpTo(t, addr, publish)
	if q := b.clientQueuedBytes("bp-stuck"); q != 0 {
		t.Errorf("%d bytes counted for a message that was never queued", q)
	}
	if q := b.queuedBytes(); q != 0 {
		t.Errorf("%d bytes counted in all", q)
	}
	if w := testCounter(t, b.sendqBackpressure().waits); w != waits+1 {
		t.Errorf("Backpressure waited %v times for the large message, want once", w-waits)
	}
}

// sendqBackpressure is the Backpressure hook the broker counts for.
func (b *Broker) sendqBackpressure() *Backpressure {
	for _, h := range b.opts.Hooks {
		if bp, ok := h.(*Backpressure); ok {
			return bp
		}
	}
	panic("no Backpressure hook")
}

// TestSendQueueKeepsQoS12Topics: the send queue's OnPublish gives a large
// QoS 0 message a topic string of its own, but leaves a QoS 1/2 one's
// as it finds it: the session store, an earlier OnPublish, keys its
// routing by that string's address, and a second copy hid the message
// from it (a persistent session got it twice: TestClusterDurableBurst,
// 57 of 96). Both are routed here, under the string they leave with.
func TestSendQueueKeepsQoS12Topics(t *testing.T) {
	q := newSendQueue(nil, slog.New(slog.NewTextHandler(io.Discard, nil)), 8<<20, 256<<20)
	h := &sendQueueHook{q: q}
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Inline: true}}
	for qos := range byte(3) {
		topic := strings.Clone("big/frame")
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: make([]byte, largeMessage)}
		out, err := h.OnPublish(cl, pk)
		if err != nil {
			t.Fatal(err)
		}
		same := unsafe.StringData(out.TopicName) == unsafe.StringData(topic)
		if want := qos > 0; same != want {
			t.Errorf("QoS %d: the topic string kept: %v, want %v", qos, same, want)
		}
		if _, ok := q.routes.Load(unsafe.StringData(out.TopicName)); !ok {
			t.Errorf("QoS %d: not routed under the topic it leaves with", qos)
		}
		h.OnPublished(cl, out)
		if n := q.nRoutes.Load(); n != 0 {
			t.Errorf("QoS %d: %d routes left after OnPublished", qos, n)
		}
	}
}
