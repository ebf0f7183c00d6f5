package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	pp "github.com/eclipse/paho.golang/packets"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices"
)

// What FuzzBrokerStream found, each as a plain test: the engine's answers
// that break the protocol, and the packet that ended the process.

// readToEOF reads what the broker sends on c until it closes it.
func readToEOF(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read until the broker closes (got % x): %v", b, err)
	}
	return b
}

// TestSubscribeWithoutOptionsRefused: an MQTT 5 SUBSCRIBE whose topic
// filter has no options byte made the engine's decoder panic, which ended
// the whole broker (8 bytes from any client that may connect). It is
// refused with DISCONNECT 0x81 malformed packet, the client's will goes
// out, and the broker serves the next client; with no packet size limit
// too.
func TestSubscribeWithoutOptionsRefused(t *testing.T) {
	for _, max := range []uint32{1 << 20, 0} {
		b, _ := testBroker(t, func(o *Options) { o.MaxPacketSize = max })
		addr := b.TCP.Address()
		w := storeClient(t, addr, "watcher", true, nil)
		got := make(chan string, 1)
		waitToken(t, "subscribe", w.Subscribe("will/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }))

		rc := dialRaw(t, addr)
		cp := pp.NewControlPacket(pp.CONNECT)
		c := cp.Content.(*pp.Connect)
		c.ProtocolName, c.ProtocolVersion, c.ClientID, c.CleanStart, c.KeepAlive = "MQTT", 5, "crasher", true, 30
		c.Properties, c.WillProperties = &pp.Properties{}, &pp.Properties{}
		c.WillFlag, c.WillTopic, c.WillMessage = true, "will/crasher", []byte("gone")
		rc.send(cp)
		if ack, ok := rc.read(5 * time.Second).Content.(*pp.Connack); !ok || ack.ReasonCode != 0 {
			t.Fatalf("max %d: no CONNACK 0", max)
		}
		rc.c.Write([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'})
		if b := readToEOF(t, rc.c); !bytes.Equal(b, []byte{0xE0, 0x01, 0x81}) {
			t.Fatalf("max %d: got % x, want DISCONNECT 0x81 and the connection closed", max, b)
		}
		select {
		case p := <-got:
			if p != "gone" {
				t.Fatalf("will %q", p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("max %d: the will did not go out", max)
		}
		if _, h, _ := dialConnect(t, addr, 5, "next"); h != 0x20 {
			t.Fatalf("max %d: the next client got %#x, want CONNACK", max, h)
		}
	}
}

// TestMQTT_3_2_2_311Refusals: a client of MQTT 3.1.1 (or of a protocol
// level the broker does not speak) is refused in 3.1.1's terms: return
// codes 1 to 5 [MQTT-3.2.2-4], or, for a CONNECT that breaks the
// protocol, no CONNACK at all, the connection closed [MQTT-4.8.0-1]. The
// engine sent MQTT 5 reason codes (0x82, 0x80) that a 3.1.1 client cannot
// read.
func TestMQTT_3_2_2_311Refusals(t *testing.T) {
	b, _ := testBroker(t, nil)
	connect := func(level, flags byte, id string) []byte {
		var p bytes.Buffer
		mqttStr(&p, "MQTT")
		p.Write([]byte{level, flags, 0, 60})
		mqttStr(&p, id)
		return rawFrame(0x10, p.Bytes())
	}
	for _, tt := range []struct {
		name    string
		connect []byte
		want    []byte
	}{
		{"reserved flag set [MQTT-3.1.2-3]", connect(4, 0x03, "r"), nil},
		{"will retain without will [MQTT-3.1.2-15]", connect(4, 0x22, "w"), nil},
		{"protocol level 6 [MQTT-3.1.2-2]", connect(6, 0x02, "p"), []byte{0x20, 0x02, 0x00, 0x01}},
		{"empty client id, clean session 0 [MQTT-3.1.3-8]", connect(4, 0x00, ""), []byte{0x20, 0x02, 0x00, 0x02}},
		{"accepted", connect(4, 0x02, "ok"), []byte{0x20, 0x02, 0x00, 0x00}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCP.Address())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.connect)
			c.(*net.TCPConn).CloseWrite()
			if got := readToEOF(t, c); !bytes.Equal(got, tt.want) {
				t.Fatalf("got % x, want % x", got, tt.want)
			}
		})
	}
}

// TestMQTT_3_14_311NoDisconnect: 3.1.1 has no DISCONNECT from the server:
// a 3.1.1 client whose QoS 1 publish is refused [MQTT-3.3.5-2], or whose
// session another connection takes over [MQTT-3.1.4-3], is closed without
// one. The engine sent it DISCONNECT 0x87 or 0x8E.
func TestMQTT_3_14_311NoDisconnect(t *testing.T) {
	e := startAuthEnv(t, false)
	pass := e.user(t, "vic", devices.RoleViewer)

	t.Run("refused publish", func(t *testing.T) {
		code, c := authRawConnectConn(t, e.tcp, 4, "vic-pub", "vic", pass)
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		c.Write(rawPublishQoS1("devices/x/telemetry", []byte(`{"t":1}`)))
		if got := readToEOF(t, c); len(got) != 0 {
			t.Fatalf("got % x, want the connection closed and nothing more", got)
		}
	})
	t.Run("taken over", func(t *testing.T) {
		code, old := authRawConnectConn(t, e.tcp, 4, "vic-twice", "vic", pass)
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		code, c := authRawConnectConn(t, e.tcp, 4, "vic-twice", "vic", pass)
		if code != 0 {
			t.Fatalf("takeover: CONNACK %#x", code)
		}
		defer c.Close()
		if got := readToEOF(t, old); len(got) != 0 {
			t.Fatalf("got % x, want the connection closed and nothing more", got)
		}
	})
}

// TestMQTT_3_3_2_3_4_AliasNeverSet: a PUBLISH by a Topic Alias the client
// never set has no topic: a protocol error, DISCONNECT 0x82, nothing
// acknowledged, routed or retained. The engine acknowledged it as
// delivered (PUBACK 0), routed it to the empty topic, where nobody gets
// it, and retained it there.
func TestMQTT_3_3_2_3_4_AliasNeverSet(t *testing.T) {
	e := startAuthEnv(t, false)
	admin := e.user(t, "root", devices.RoleAdmin)
	var all authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("#", 1, all.handler))

	code, conn := authRawConnectConn(t, e.tcp, 5, "aliaser", "root", admin)
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	rc := &rawClient{t: t, c: conn, r: bufio.NewReader(conn)}
	n := uint16(3)
	p := publish5("", 1, 1, "lost", &pp.Properties{TopicAlias: &n})
	p.Content.(*pp.Publish).Retain = true
	rc.send(p)
	cp := rc.read(5 * time.Second)
	if d, ok := cp.Content.(*pp.Disconnect); !ok || d.ReasonCode != 0x82 {
		t.Fatalf("got %s %+v, want DISCONNECT 0x82", cp.PacketType(), cp.Content)
	}
	if b, _ := io.ReadAll(rc.r); len(b) != 0 {
		t.Fatalf("after the DISCONNECT: % x", b)
	}
	if m, ok := e.b.Server.Topics.Retained.Get(""); ok {
		t.Fatalf("retained on the empty topic: %q", m.Payload)
	}
	// A marker published after it arrives: had the message been routed,
	// it would be there before.
	waitToken(t, "publish marker", w.Publish("marker", 1, false, "m"))
	checkFor(t, 5*time.Second, func() error {
		if len(all.payloads("marker")) == 0 {
			return io.ErrNoProgress
		}
		return nil
	})
	all.mu.Lock()
	defer all.mu.Unlock()
	for _, m := range all.msgs {
		if string(m.Payload()) == "lost" {
			t.Fatalf("routed to %q", m.Topic())
		}
	}
}

// TestMQTT_4_12_0_1_NoEnhancedAuthentication: the broker has no enhanced
// authentication, so a CONNECT that asks for it (an Authentication
// Method) gets CONNACK 0x8C bad authentication method, and the connection
// closes [MQTT-4.12.0-1]. The engine accepted it on its password (here:
// anonymously), as if the method had been carried out.
func TestMQTT_4_12_0_1_NoEnhancedAuthentication(t *testing.T) {
	b, _ := testBroker(t, nil)
	rc := dialRaw(t, b.TCP.Address())
	cp := pp.NewControlPacket(pp.CONNECT)
	c := cp.Content.(*pp.Connect)
	c.ProtocolName, c.ProtocolVersion, c.ClientID, c.CleanStart = "MQTT", 5, "scram", true
	c.Properties = &pp.Properties{AuthMethod: "SCRAM-SHA-1", AuthData: []byte("client-first")}
	rc.send(cp)
	ack, ok := rc.read(5 * time.Second).Content.(*pp.Connack)
	if !ok || ack.ReasonCode != 0x8C {
		t.Fatalf("got %+v, want CONNACK 0x8C", ack)
	}
	if b, _ := io.ReadAll(rc.r); len(b) != 0 {
		t.Fatalf("after the CONNACK: % x", b)
	}
}

// TestPacketIDsIndependent: a client numbers its packets independently of
// the broker (MQTT 5 section 2.2.1, 3.1.1 section 2.3.1), so it may use
// an id the broker is using for a message in flight to it. The engine
// keeps both directions' ids in one store: the client's QoS 1 PUBLISH
// deleted the broker's unacknowledged message, which was never sent
// again, and its SUBSCRIBE and UNSUBSCRIBE were refused 0x91 (3.1.1
// clients got 0x91 too, a code 3.1.1 does not have). Now each gets its
// answer under its own id, and the broker's message comes again after a
// reconnect [MQTT-4.4.0-1]. A client that reuses an id of its own still in
// flight (a QoS 2 PUBLISH awaiting its PUBREL) is refused, 0x80 for 3.1.1.
//
// With the access hook (Auth) the renumbering is done in its
// OnPacketRead, without it by the gate's own: both are tested.
func TestPacketIDsIndependent(t *testing.T) {
	b, _ := testBroker(t, nil)
	brokers := map[string]string{"no access hook": b.TCP.Address(), "access hook": startAuthEnv(t, true).tcp}
	for name, addr := range brokers {
		publisher := storeClient(t, addr, "publisher", true, nil)
		for _, v := range []byte{4, 5} {
			t.Run(fmt.Sprintf("%s/MQTT %d", name, v), func(t *testing.T) {
				id := fmt.Sprintf("ids-%d", v)
				topic := "ids/" + id
				dial := func() (net.Conn, *bufio.Reader) {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.Close() })
					c.Write(connectBytes(v, id, "", "", false, "", false, false))
					r := bufio.NewReader(c)
					if h, _ := readPacketRaw(t, c, r); h != 0x20 {
						t.Fatalf("got %#x, want CONNACK", h)
					}
					return c, r
				}
				// answer reads the next packet, which must be of type typ with
				// packet id pid; it returns its reason codes.
				answer := func(c net.Conn, r *bufio.Reader, typ byte, pid uint16) []byte {
					t.Helper()
					h, body := readPacketRaw(t, c, r)
					if h>>4 != typ || len(body) < 2 || uint16(body[0])<<8|uint16(body[1]) != pid {
						t.Fatalf("got %#x % x, want type %d with packet id %d", h, body, typ, pid)
					}
					codes := body[2:]
					if v == 5 && (typ == packets.Suback || typ == packets.Unsuback) {
						codes = codes[1+int(codes[0]):] // past the properties
					} else if v == 5 && len(codes) > 0 {
						codes = codes[:1]
					}
					return codes
				}
				c, r := dial()
				c.Write(enc(v, sub(1, packets.Properties{}, packets.Subscription{Filter: topic, Qos: 1})))
				answer(c, r, packets.Suback, 1)
				waitToken(t, "publish", publisher.Publish(topic, 1, false, "important"))
				h, body := readPacketRaw(t, c, r) // not acknowledged
				tl := int(body[0])<<8 | int(body[1])
				x := uint16(body[2+tl])<<8 | uint16(body[3+tl])
				if h>>4 != packets.Publish {
					t.Fatalf("got %#x, want the PUBLISH", h)
				}

				c.Write(enc(v, sub(x, packets.Properties{}, packets.Subscription{Filter: "ids/other", Qos: 1})))
				if codes := answer(c, r, packets.Suback, x); !bytes.Equal(codes, []byte{1}) {
					t.Fatalf("SUBSCRIBE with id %d: SUBACK % x, want 01", x, codes)
				}
				c.Write(enc(v, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: x,
					Filters: packets.Subscriptions{{Filter: "ids/other"}}}))
				if codes := answer(c, r, packets.Unsuback, x); v == 5 && !bytes.Equal(codes, []byte{0}) {
					t.Fatalf("UNSUBSCRIBE with id %d: UNSUBACK % x, want 00", x, codes)
				}
				c.Write(enc(v, pub(1, false, x, "ids/own", "mine", packets.Properties{})))
				if codes := answer(c, r, packets.Puback, x); len(codes) > 0 && codes[0] != 0 {
					t.Fatalf("own QoS 1 PUBLISH with id %d: PUBACK %#x", x, codes[0])
				}
				c.Write(enc(v, pub(2, false, x, "ids/own", "mine too", packets.Properties{})))
				answer(c, r, packets.Pubrec, x)
				c.Write(enc(v, ack(packets.Pubrel, x)))
				if codes := answer(c, r, packets.Pubcomp, x); len(codes) > 0 && codes[0] != 0 {
					t.Fatalf("PUBCOMP %#x", codes[0])
				}

				y := x + 100 // an id the broker does not use
				c.Write(enc(v, pub(2, false, y, "ids/own", "mine again", packets.Properties{})))
				answer(c, r, packets.Pubrec, y)
				c.Write(enc(v, sub(y, packets.Properties{}, packets.Subscription{Filter: "ids/other", Qos: 1})))
				want := []byte{0x91}
				if v == 4 {
					want = []byte{0x80}
				}
				if codes := answer(c, r, packets.Suback, y); !bytes.Equal(codes, want) {
					t.Fatalf("SUBSCRIBE with the id of its own QoS 2 PUBLISH in flight: SUBACK % x, want % x", codes, want)
				}
				c.Write(enc(v, ack(packets.Pubrel, y)))
				answer(c, r, packets.Pubcomp, y)
				c.Close()

				c, r = dial()
				h, body = readPacketRaw(t, c, r)
				if h>>4 != packets.Publish || !bytes.HasSuffix(body, []byte("important")) {
					t.Fatalf("after the reconnect: got %#x % x, want the unacknowledged message again", h, body)
				}
			})
		}
	}
}

// readPacketRaw reads one packet from r: its fixed header byte and body.
func readPacketRaw(t *testing.T, c net.Conn, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	rc := &rawClient{t: t, c: c, r: r}
	h, body, err := rc.readRaw(5 * time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return h, body
}

// TestPacketHeaderAloneCostsLittle: the engine allocates a packet's whole
// body once it has read the remaining length, so a CONNECT header
// announcing 1 MiB (4 bytes, before any login) made it hold 1 MiB until
// the connect timeout: 200 such connections, 200 MB. The listener holds a
// large packet back until it has arrived, so they cost what they sent.
func TestPacketHeaderAloneCostsLittle(t *testing.T) {
	b, _ := testBroker(t, func(o *Options) { o.AllowAnonymous = false })
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	const n = 200
	for range n {
		c, err := net.Dial("tcp", b.TCP.Address())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{0x10, 0xFA, 0xFF, 0x3F}) // CONNECT, remaining length 1,048,570, and nothing more
	}
	checkFor(t, 10*time.Second, func() error {
		if in := b.TCP.Stats().BytesIn.Load(); in < 4*n {
			return fmt.Errorf("the broker has read %d bytes of %d", in, 4*n)
		}
		return nil
	})
	grown := int64(heap()) - int64(before)
	t.Logf("%d connections, a 1 MiB CONNECT header each: heap in use grew by %d KB", n, grown>>10)
	if grown > 40<<20 {
		t.Fatalf("%d connections that sent a CONNECT header of 1 MiB, nothing more: heap in use grew by %d MB", n, grown>>20)
	}
}

// TestUnsubscribeNeverSubscribed: an UNSUBSCRIBE of a filter the client
// does not hold gets 0x11 no subscription existed and leaves the count of
// subscriptions (tether_mqtt_subscriptions) alone. The engine's index
// took it for a subscription whenever another client subscribed to the
// filter or a message was retained on it: it answered 0x00 and counted
// one subscription less each time, below zero.
func TestUnsubscribeNeverSubscribed(t *testing.T) {
	b, _ := testBroker(t, nil)
	addr := b.TCP.Address()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(b))
	subscriptions := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "tether_mqtt_subscriptions" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no tether_mqtt_subscriptions")
		return 0
	}
	other := storeClient(t, addr, "other", true, nil)
	waitToken(t, "subscribe", other.Subscribe("unsub/held", 1, nil))
	waitToken(t, "retain", other.Publish("unsub/retained", 1, true, "r"))
	if n := subscriptions(); n != 1 {
		t.Fatalf("tether_mqtt_subscriptions %v, want 1", n)
	}

	rc := dialRaw(t, addr)
	rc.connect5("unsubscriber", 60)
	u := pp.NewControlPacket(pp.UNSUBSCRIBE)
	uc := u.Content.(*pp.Unsubscribe)
	uc.PacketID, uc.Topics, uc.Properties = 1, []string{"unsub/held", "unsub/retained", "unsub/nothing"}, &pp.Properties{}
	for range 3 {
		rc.send(u)
		ack, ok := rc.read(5 * time.Second).Content.(*pp.Unsuback)
		if !ok || !bytes.Equal(ack.Reasons, []byte{0x11, 0x11, 0x11}) {
			t.Fatalf("UNSUBACK %+v, want 0x11 for each filter", ack)
		}
	}
	s := pp.NewControlPacket(pp.SUBSCRIBE)
	sc := s.Content.(*pp.Subscribe)
	sc.PacketID, sc.Properties, sc.Subscriptions = 2, &pp.Properties{}, []pp.SubOptions{{Topic: "unsub/retained", QoS: 1}}
	rc.send(s)
	if _, ok := rc.read(5 * time.Second).Content.(*pp.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	rc.read(5 * time.Second) // the retained message
	uc.PacketID, uc.Topics = 3, []string{"unsub/retained", "unsub/held"}
	rc.send(u)
	if ack, ok := rc.read(5 * time.Second).Content.(*pp.Unsuback); !ok || !bytes.Equal(ack.Reasons, []byte{0x00, 0x11}) {
		t.Fatalf("UNSUBACK %+v, want 0x00 for its own filter, 0x11 for the other", ack)
	}
	if n := subscriptions(); n != 1 {
		t.Fatalf("tether_mqtt_subscriptions %v, want 1 (the other client's)", n)
	}
}

// TestExpiredSessionSubscriptionsGone: when a persistent session expires,
// its subscriptions go with it. The engine kept them in its index: a new
// clean session with the same client id got messages it never subscribed
// to [MQTT-3.1.2-4], and tether_mqtt_subscriptions counted them forever.
func TestExpiredSessionSubscriptionsGone(t *testing.T) {
	b, _ := testBroker(t, nil)
	addr := b.TCP.Address()
	connect := func(clean bool, expiry uint32) *rawClient {
		rc := dialRaw(t, addr)
		cp := pp.NewControlPacket(pp.CONNECT)
		c := cp.Content.(*pp.Connect)
		c.ProtocolName, c.ProtocolVersion, c.ClientID, c.CleanStart = "MQTT", 5, "expiring", clean
		c.Properties = &pp.Properties{SessionExpiryInterval: &expiry}
		rc.send(cp)
		if ack, ok := rc.read(5 * time.Second).Content.(*pp.Connack); !ok || ack.ReasonCode != 0 {
			t.Fatal("no CONNACK 0")
		}
		return rc
	}
	rc := connect(true, 1)
	s := pp.NewControlPacket(pp.SUBSCRIBE)
	sc := s.Content.(*pp.Subscribe)
	sc.PacketID, sc.Properties, sc.Subscriptions = 1, &pp.Properties{}, []pp.SubOptions{{Topic: "expiring/t"}}
	rc.send(s)
	rc.read(5 * time.Second)
	rc.c.Close()
	checkFor(t, 10*time.Second, func() error {
		if _, ok := b.Server.Clients.Get("expiring"); ok {
			return errors.New("the session has not expired yet")
		}
		return nil
	})
	if n := atomic.LoadInt64(&b.Server.Info.Subscriptions); n != 0 {
		t.Errorf("%d subscriptions counted after the session expired, want 0", n)
	}

	rc = connect(true, 0)
	pub := storeClient(t, addr, "pub", true, nil)
	waitToken(t, "publish", pub.Publish("expiring/t", 0, false, "not for it"))
	// A marker it did subscribe to, published after: had the first
	// message been routed to it, it would come first.
	sc.PacketID, sc.Subscriptions = 2, []pp.SubOptions{{Topic: "expiring/marker"}}
	rc.send(s)
	rc.read(5 * time.Second) // SUBACK
	waitToken(t, "publish", pub.Publish("expiring/marker", 0, false, "marker"))
	if p, ok := rc.read(5 * time.Second).Content.(*pp.Publish); !ok || p.Topic != "expiring/marker" {
		t.Fatalf("the new session got %+v first, want the marker", p)
	}
}
