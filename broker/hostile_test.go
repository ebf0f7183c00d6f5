package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	pp "github.com/eclipse/paho.golang/packets"
	paho "github.com/eclipse/paho.mqtt.golang"

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
// the whole broker (7 bytes from any client that may connect). It is
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
