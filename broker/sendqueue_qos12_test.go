package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker/sessions"
)

// stuckSubscriber connects a 3.1.1 client subscribed at qos to filter that
// never reads once subscribed; clean=false makes its session persistent.
func stuckSubscriber(t *testing.T, addr, id, filter string, clean bool, qos byte) net.Conn {
	t.Helper()
	return rawQoSSubscriber(t, addr, id, filter, clean, qos, true)
}

// rawQoSSubscriber connects a 3.1.1 client subscribed at qos to filter, with
// a small receive buffer if small.
func rawQoSSubscriber(t *testing.T, addr, id, filter string, clean bool, qos byte, small bool) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if small {
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
	}
	pk := connectPacket(4, id)
	if !clean {
		pk[2+2+4+1] = 0 // the connect flags: no clean session
	}
	var sub []byte
	sub = append(sub, 0, 1) // packet id
	sub = binary.BigEndian.AppendUint16(sub, uint16(len(filter)))
	sub = append(sub, filter...)
	sub = append(sub, qos)
	if _, err := c.Write(append(pk, append([]byte{0x82, byte(len(sub))}, sub...)...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4+5) // CONNACK, SUBACK
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 || ack[8] != qos {
		t.Fatalf("CONNACK, SUBACK %x %v", ack, err)
	}
	return c // from here on it reads nothing
}

// deafSubscriber is stuckSubscriber reading everything sent to it, and
// acknowledging nothing.
func deafSubscriber(t *testing.T, addr, id, filter string, clean bool, qos byte) net.Conn {
	t.Helper()
	c := rawQoSSubscriber(t, addr, id, filter, clean, qos, false)
	c.SetReadDeadline(time.Time{})
	go io.Copy(io.Discard, c)
	return c
}

// numbered is a payload of size bytes that starts with i.
func numbered(i, size int) []byte {
	p := bytes.Repeat([]byte{'x'}, size)
	copy(p, fmt.Sprintf("%08d", i))
	return p
}

// seen counts the distinct numbered payloads received, keeping only their
// numbers.
type seen struct {
	mu  sync.Mutex
	got map[string]bool
}

func (s *seen) add(m paho.Message) {
	p := m.Payload()
	if len(p) < 8 {
		return
	}
	s.mu.Lock()
	if s.got == nil {
		s.got = map[string]bool{}
	}
	s.got[string(p[:8])] = true
	s.mu.Unlock()
}

func (s *seen) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// Ten clean-session subscribers at QoS 1 that acknowledge nothing, and a
// device publishing QoS 1 messages of 1 MB, at the defaults. One that
// reads nothing holds its publishers (the engine takes the client's lock
// for a packet id while its writer holds it) until limits.write_timeout
// ends it; one that reads but never acknowledges had the engine keep a
// copy of each message in its in-flight store, up to mqtt.max_inflight
// (64 MB each here, 1 GB with 1,024 of them). Now the in-flight messages
// are counted against mqtt.client_queue_bytes, and a subscriber past it
// that acknowledges nothing for a round is disconnected, its messages
// dropped and counted; a subscriber that reads at QoS 1 gets every
// message and is not disconnected, and nothing stays counted once it has
// acknowledged them.
func TestSendQueueQoS1StuckViewers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		connect func(t *testing.T, addr, id, filter string, clean bool, qos byte) net.Conn
		bound   bool // the byte bound is what ends them
	}{
		{"reading nothing", stuckSubscriber, false},
		{"acknowledging nothing", deafSubscriber, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, addr := startSendQueueBroker(t)
			const viewers, n, size = 10, 64, 1_000_000
			for i := range viewers {
				tc.connect(t, addr, fmt.Sprintf("viewer-%d", i), "big/#", true, 1)
			}
			var got seen
			reader := storeClient(t, addr, "reader", true, got.add)
			waitToken(t, "subscribe", reader.Subscribe("big/#", 1, nil))

			base := liveHeap()
			pub := storeClient(t, addr, "device", true, nil)
			for i := range n {
				testmqttWait(t, pub.Publish("big/frame", 1, false, numbered(i, size)))
			}
			routedUpTo(t, addr, func(topic string, p []byte) { testmqttWait(t, pub.Publish(topic, 1, false, p)) })

			live := liveHeap()
			grew := int64(live) - int64(base)
			t.Logf("live heap %d MB before, %d MB after (+%d MB); %d bytes counted; %d disconnected, %d dropped",
				base>>20, live>>20, grew>>20, b.queuedBytes(), b.sendq.Disconnected(dropClientBytes), b.sendq.Dropped(dropClientBytes))
			// Ten bounds of 8 MiB, what each connection's writer holds,
			// and room for the rest.
			if limit := int64(viewers*9<<20 + 64<<20); grew > limit {
				t.Errorf("the live heap grew by %d MB with %d QoS 1 viewers %s, want at most %d MB", grew>>20, viewers, tc.name, limit>>20)
			}
			checkFor(t, time.Minute, func() error {
				for i := range viewers {
					id := fmt.Sprintf("viewer-%d", i)
					if cl, ok := b.Server.Clients.Get(id); ok && !cl.Closed() {
						return fmt.Errorf("%s is still connected", id)
					}
				}
				return nil
			})
			if tc.bound {
				if d := b.sendq.Disconnected(dropClientBytes); d != viewers {
					t.Errorf("%d viewers disconnected for mqtt.client_queue_bytes, want %d", d, viewers)
				}
				if d := b.sendq.Dropped(dropClientBytes); d < viewers {
					t.Errorf("%d QoS 1 messages of clean sessions counted as dropped, want at least %d", d, viewers)
				}
			}
			checkFor(t, time.Minute, func() error {
				if k := got.n(); k != n {
					return fmt.Errorf("the reading subscriber got %d of %d messages", k, n)
				}
				if q := b.clientQueuedBytes("reader"); q != 0 {
					return fmt.Errorf("the reader's acknowledged messages still count %d bytes", q)
				}
				return nil
			})
			if cl, ok := b.Server.Clients.Get("reader"); !ok || cl.Closed() {
				t.Error("the reading subscriber was disconnected")
			}
			checkFor(t, time.Minute, func() error {
				if q := b.queuedBytes(); q != 0 {
					return fmt.Errorf("%d bytes still counted with no one behind", q)
				}
				return nil
			})
		})
	}
}

// testmqttWait waits for a publish the broker may hold back for a round
// per stuck subscriber.
func testmqttWait(t *testing.T, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(2*time.Minute) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// startStoreBroker starts a broker at the defaults with Backpressure and
// the session store, as tether runs them.
func startStoreBroker(t *testing.T) *Broker {
	t.Helper()
	store, err := sessions.Open(t.TempDir(), &sessions.Options{Logger: storeLogger()})
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.TCPAddr, o.AllowAnonymous, o.Logger = "127.0.0.1:0", true, storeLogger()
	bp := NewBackpressure(time.Second)
	o.Hooks = []mqtt.Hook{bp, store}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	store.Attach(b.Server)
	bp.Attach(b.Server)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Shutdown(t.Context())
		store.Close()
	})
	return b
}

// Persistent sessions at QoS 1 that stop reading (or read and never
// acknowledge), with the session store, at the defaults: the heap stays
// bounded while they are stuck, they are disconnected (for the byte
// bound, or by limits.write_timeout), and each, reconnecting, gets every
// message its publisher had acknowledged: none is lost (a resent one
// comes with DUP, counted once). A subscriber that reads is not
// disconnected.
func TestSendQueueQoS1StuckPersistentSessions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		connect func(t *testing.T, addr, id, filter string, clean bool, qos byte) net.Conn
		bound   bool
	}{
		{"reading nothing", stuckSubscriber, false},
		{"acknowledging nothing", deafSubscriber, true},
	} {
		t.Run(tc.name, func(t *testing.T) { testStuckPersistentSessions(t, tc.connect, tc.bound) })
	}
}

func testStuckPersistentSessions(t *testing.T, connect func(t *testing.T, addr, id, filter string, clean bool, qos byte) net.Conn, bound bool) {
	b := startStoreBroker(t)
	addr := b.TCP.Address()
	const viewers, n, size = 3, 48, 1_000_000
	conns := make([]net.Conn, viewers)
	for i := range viewers {
		conns[i] = connect(t, addr, fmt.Sprintf("pviewer-%d", i), "big/#", false, 1)
	}
	var live seen
	reader := storeClient(t, addr, "reader", false, live.add)
	waitToken(t, "subscribe", reader.Subscribe("big/#", 1, nil))

	base := liveHeap()
	pub := storeClient(t, addr, "device", true, nil)
	for i := range n {
		testmqttWait(t, pub.Publish("big/frame", 1, false, numbered(i, size)))
	}
	routedUpTo(t, addr, func(topic string, p []byte) { testmqttWait(t, pub.Publish(topic, 1, false, p)) })
	heap := liveHeap()
	grew := int64(heap) - int64(base)
	t.Logf("live heap %d MB before, %d MB after (+%d MB); %d disconnected for the bound",
		base>>20, heap>>20, grew>>20, b.sendq.Disconnected(dropClientBytes))
	// Each session's read-ahead (at most 8 MiB, sharing the messages),
	// what each stuck connection holds (its in-flight messages at most
	// 8 MiB), and room for the rest. Measured: +24 MB reading nothing,
	// +36 MB acknowledging nothing (+58 and +72 MB with read-ahead of 256
	// messages, whatever their size).
	if limit := int64(viewers*16<<20 + 40<<20); grew > limit {
		t.Errorf("the live heap grew by %d MB with %d persistent QoS 1 viewers that read nothing, want at most %d MB", grew>>20, viewers, limit>>20)
	}
	checkFor(t, 2*time.Minute, func() error {
		for i := range viewers {
			id := fmt.Sprintf("pviewer-%d", i)
			if cl, ok := b.Server.Clients.Get(id); ok && !cl.Closed() {
				return fmt.Errorf("%s is still connected", id)
			}
		}
		return nil
	})
	for _, c := range conns {
		c.Close()
	}
	for i := range viewers {
		id := fmt.Sprintf("pviewer-%d", i)
		var got seen
		storeClient(t, addr, id, false, got.add)
		checkFor(t, 2*time.Minute, func() error {
			if k := got.n(); k != n {
				return fmt.Errorf("%s got %d of %d acknowledged messages after reconnecting", id, k, n)
			}
			return nil
		})
	}
	checkFor(t, time.Minute, func() error {
		if k := live.n(); k != n {
			return fmt.Errorf("the reading subscriber got %d of %d messages", k, n)
		}
		return nil
	})
	if cl, ok := b.Server.Clients.Get("reader"); !ok || cl.Closed() {
		t.Error("the reading subscriber was disconnected")
	}
	if d := b.sendq.Dropped(dropClientBytes) + b.sendq.Dropped(dropTotalBytes); d != 0 {
		t.Errorf("%d messages of persistent sessions counted as dropped", d)
	}
	if d := b.sendq.Disconnected(dropClientBytes); bound && d != viewers {
		t.Errorf("%d viewers disconnected for mqtt.client_queue_bytes, want %d", d, viewers)
	}
}

// An MQTT 5 subscriber at QoS 1 that reads everything and acknowledges
// nothing gets DISCONNECT 0x97 quota exceeded once it is past
// mqtt.client_queue_bytes and has acknowledged nothing for a round.
func TestSendQueueQoS1DisconnectQuotaExceeded(t *testing.T) {
	b, addr := startSendQueueBroker(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "deaf5"}}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "big/#", Qos: 1}}}
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	type last struct {
		typ    byte
		reason byte
	}
	done := make(chan last, 1)
	suback := make(chan struct{})
	go func() {
		var l last
		for {
			hb, err := r.ReadByte()
			if err != nil {
				done <- l
				return
			}
			n, _, err := packets.DecodeLength(r)
			if err != nil {
				done <- l
				return
			}
			body := make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				done <- l
				return
			}
			l = last{typ: hb >> 4}
			if l.typ == packets.Disconnect && n > 0 {
				l.reason = body[0]
			}
			if l.typ == packets.Suback {
				close(suback)
			}
		}
	}()
	select {
	case <-suback:
	case <-time.After(20 * time.Second):
		t.Fatal("no SUBACK")
	}
	pub := storeClient(t, addr, "device", true, nil)
	const size = 1_000_000
	for i := 0; i < 32; i++ {
		testmqttWait(t, pub.Publish("big/frame", 1, false, numbered(i, size)))
		if d := b.sendq.Disconnected(dropClientBytes); d > 0 {
			break
		}
	}
	select {
	case l := <-done:
		if l.typ != packets.Disconnect || l.reason != packets.ErrQuotaExceeded.Code {
			t.Errorf("the connection ended after packet type %d reason %#x, want DISCONNECT %#x", l.typ, l.reason, packets.ErrQuotaExceeded.Code)
		}
	case <-time.After(time.Minute):
		t.Fatal("still connected")
	}
	if d := b.sendq.Disconnected(dropClientBytes); d != 1 {
		t.Errorf("%d disconnected for mqtt.client_queue_bytes, want 1", d)
	}
}

// The engine takes a QoS 1/2 message back out of a subscriber's
// in-flight store when its send queue is full, telling the hooks only
// that a message was dropped, before it deletes it: what it took back is
// released when the subscriber is next past a bound, rather than counted
// until the client leaves (which had a healthy subscriber with nothing in
// flight wait a round for an acknowledgement that could not come, and be
// disconnected).
func TestSendQueueQoS12ReleasesWhatTheEngineTookBack(t *testing.T) {
	srv := mqtt.New(nil)
	q := newSendQueue(srv, slog.New(slog.NewTextHandler(io.Discard, nil)), 8<<20, 256<<20)
	q.wait = 5 * time.Second
	cl := srv.NewClient(nil, "test", "sub", false)
	publish := func(id uint16) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id,
			TopicName: "big/frame", Payload: make([]byte, 1<<20), Origin: "device"}
		cl.State.Inflight.Set(pk)
		q.qosPublish(cl, &pk)
	}
	for id := range uint16(8) {
		publish(id + 1)
	}
	for id := range uint16(4) {
		cl.State.Inflight.Delete(id + 1) // taken back, no hook told
	}
	publish(9)
	if d := q.Disconnected(dropClientBytes); d != 0 {
		t.Errorf("%d disconnected, want none: 5 MiB are in flight", d)
	}
	if n := q.bytes.Load(); n != 5<<20 {
		t.Errorf("%d bytes counted, want %d (what is in flight)", n, 5<<20)
	}
	for id := range uint16(9) {
		q.qosDone(cl, id+1)
	}
	if n, k := q.bytes.Load(), q.tracked.Load(); n != 0 || k != 0 {
		t.Errorf("%d bytes, %d messages counted once all were acknowledged", n, k)
	}
}
