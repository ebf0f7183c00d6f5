package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	pp "github.com/eclipse/paho.golang/packets"

	"github.com/tether-iot/tether/devices"
)

// Protocol rules checked byte by byte with an independent codec (paho's
// packets package, not the engine's), each test named after the
// specification's id.

// rawClient is one MQTT connection driven packet by packet.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawClient) send(cp *pp.ControlPacket) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := cp.WriteTo(rc.c); err != nil {
		rc.t.Fatalf("send %s: %v", cp.PacketType(), err)
	}
}

// readRaw reads one packet as bytes: the fixed header's first byte and
// the variable header and payload.
func (rc *rawClient) readRaw(d time.Duration) (byte, []byte, error) {
	rc.c.SetReadDeadline(time.Now().Add(d))
	h, err := rc.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		b, err := rc.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b < 0x80 {
			break
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(rc.r, body)
	return h, body, err
}

// read decodes the next packet with paho's codec.
func (rc *rawClient) read(d time.Duration) *pp.ControlPacket {
	rc.t.Helper()
	h, body, err := rc.readRaw(d)
	if err != nil {
		rc.t.Fatalf("read: %v", err)
	}
	cp, err := pp.ReadPacket(io.MultiReader(bytes.NewReader(append([]byte{h}, vbi(len(body))...)), bytes.NewReader(body)))
	if err != nil {
		rc.t.Fatalf("decode %#x: %v", h, err)
	}
	return cp
}

func vbi(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// connect5 sends an MQTT 5 CONNECT and returns the CONNACK.
func (rc *rawClient) connect5(id string, keepalive uint16) *pp.Connack {
	rc.t.Helper()
	cp := pp.NewControlPacket(pp.CONNECT)
	c := cp.Content.(*pp.Connect)
	c.ProtocolName, c.ProtocolVersion = "MQTT", 5
	c.ClientID, c.CleanStart, c.KeepAlive = id, true, keepalive
	c.Properties = &pp.Properties{}
	rc.send(cp)
	ack, ok := rc.read(5 * time.Second).Content.(*pp.Connack)
	if !ok {
		rc.t.Fatal("no CONNACK")
	}
	if ack.ReasonCode != 0 {
		rc.t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	return ack
}

func publish5(topic string, qos byte, id uint16, payload string, props *pp.Properties) *pp.ControlPacket {
	cp := pp.NewControlPacket(pp.PUBLISH)
	p := cp.Content.(*pp.Publish)
	p.Topic, p.QoS, p.PacketID, p.Payload = topic, qos, id, []byte(payload)
	if props == nil {
		props = &pp.Properties{}
	}
	p.Properties = props
	return cp
}

// publisherProps are PUBLISH properties an acknowledgement must not echo.
func publisherProps() *pp.Properties {
	ct := "application/json"
	return &pp.Properties{
		ContentType:     ct,
		CorrelationData: []byte("corr-1"),
		ResponseTopic:   "reply/here",
		User:            []pp.User{{Key: "trace", Value: "abc123"}, {Key: "k", Value: "v"}},
	}
}

// noEchoedProperties fails when an acknowledgement's body holds anything
// beyond packet id, reason code and an empty property length, or carries
// the publisher's properties [MQTT-3.4.2.2].
func noEchoedProperties(t *testing.T, what string, h byte, body []byte, wantType byte) {
	t.Helper()
	if h>>4 != wantType {
		t.Fatalf("%s: packet type %d, want %d", what, h>>4, wantType)
	}
	if len(body) > 4 || (len(body) == 4 && body[3] != 0) {
		t.Fatalf("%s carries properties it must not (%d bytes: % x) [MQTT-3.4.2.2]", what, len(body), body)
	}
	if bytes.Contains(body, []byte("abc123")) || bytes.Contains(body, []byte("corr-1")) {
		t.Fatalf("%s echoes the PUBLISH's properties: % x", what, body)
	}
}

func TestMQTT_3_4_2_2_AcksCarryNoPublishProperties(t *testing.T) {
	b, _ := testBroker(t, nil)
	addr := b.TCP.Address()

	t.Run("PUBACK", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.connect5("ack-q1", 30)
		rc.send(publish5("conf/ack", 1, 7, "x", publisherProps()))
		h, body, err := rc.readRaw(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		noEchoedProperties(t, "PUBACK", h, body, pp.PUBACK)
	})

	t.Run("PUBREC and PUBCOMP", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.connect5("ack-q2", 30)
		rc.send(publish5("conf/ack", 2, 8, "x", publisherProps()))
		h, body, err := rc.readRaw(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		noEchoedProperties(t, "PUBREC", h, body, pp.PUBREC)
		rel := pp.NewControlPacket(pp.PUBREL)
		rel.Content.(*pp.Pubrel).PacketID = 8
		rel.Content.(*pp.Pubrel).Properties = &pp.Properties{User: []pp.User{{Key: "trace", Value: "abc123"}}}
		rc.send(rel)
		h, body, err = rc.readRaw(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		noEchoedProperties(t, "PUBCOMP", h, body, pp.PUBCOMP)
	})

	t.Run("PUBREL to a QoS 2 subscriber", func(t *testing.T) {
		sub := dialRaw(t, addr)
		sub.connect5("ack-sub", 30)
		s := pp.NewControlPacket(pp.SUBSCRIBE)
		sc := s.Content.(*pp.Subscribe)
		sc.PacketID, sc.Properties = 1, &pp.Properties{}
		sc.Subscriptions = []pp.SubOptions{{Topic: "conf/q2", QoS: 2}}
		sub.send(s)
		if _, ok := sub.read(5 * time.Second).Content.(*pp.Suback); !ok {
			t.Fatal("no SUBACK")
		}
		pub := dialRaw(t, addr)
		pub.connect5("ack-pub", 30)
		pub.send(publish5("conf/q2", 2, 1, "m", nil))
		msg, ok := sub.read(5 * time.Second).Content.(*pp.Publish)
		if !ok || msg.QoS != 2 {
			t.Fatalf("subscriber got %+v", msg)
		}
		rec := pp.NewControlPacket(pp.PUBREC)
		rec.Content.(*pp.Pubrec).PacketID = msg.PacketID
		rec.Content.(*pp.Pubrec).Properties = &pp.Properties{User: []pp.User{{Key: "trace", Value: "abc123"}}}
		sub.send(rec)
		h, body, err := sub.readRaw(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		noEchoedProperties(t, "PUBREL", h, body, pp.PUBREL)
	})
}

// TestMQTT_3_3_4_7_ReceiveMaximumExceeded: a client that has more
// unacknowledged QoS 2 PUBLISHes outstanding than the Receive Maximum in
// its CONNACK is disconnected with 0x93 (MQTT 5 §4.9).
func TestMQTT_3_3_4_7_ReceiveMaximumExceeded(t *testing.T) {
	b, _ := testBroker(t, nil)
	rc := dialRaw(t, b.TCP.Address())
	ack := rc.connect5("recv-max", 30)
	if ack.Properties == nil || ack.Properties.ReceiveMaximum == nil {
		t.Fatal("CONNACK has no Receive Maximum")
	}
	max := int(*ack.Properties.ReceiveMaximum)
	if want := int(DefaultOptions().ReceiveMaximum); max != want {
		t.Fatalf("Receive Maximum %d, want the default %d", max, want)
	}
	// PUBREL is never sent, so each PUBLISH stays unacknowledged.
	for i := 1; i <= max+1; i++ {
		rc.send(publish5("conf/recv", 2, uint16(i), "x", nil))
	}
	recs := 0
	for {
		cp := rc.read(10 * time.Second)
		switch p := cp.Content.(type) {
		case *pp.Pubrec:
			recs++
		case *pp.Disconnect:
			if p.ReasonCode != 0x93 {
				t.Fatalf("DISCONNECT %#x, want 0x93 receive maximum exceeded", p.ReasonCode)
			}
			if recs != max {
				t.Fatalf("%d PUBRECs before DISCONNECT, want %d", recs, max)
			}
			return
		default:
			t.Fatalf("unexpected %s", cp.PacketType())
		}
	}
}

// TestMQTT_3_2_2_3_14_ServerKeepAlive: with mqtt.max_keepalive set, an
// MQTT 5 client asking for no keep alive or a longer one is told the
// maximum in CONNACK's Server Keep Alive and held to it; a shorter request
// stands.
func TestMQTT_3_2_2_3_14_ServerKeepAlive(t *testing.T) {
	b, _ := testBroker(t, func(c *Options) { c.MaxKeepalive = 5 * time.Second })
	addr := b.TCP.Address()
	for _, tc := range []struct {
		asked uint16
		want  uint16 // 0: no Server Keep Alive
	}{{0, 5}, {600, 5}, {5, 0}, {4, 0}} {
		rc := dialRaw(t, addr)
		ack := rc.connect5("ka", tc.asked)
		var got uint16
		if ack.Properties != nil && ack.Properties.ServerKeepAlive != nil {
			got = *ack.Properties.ServerKeepAlive
		}
		if got != tc.want {
			t.Fatalf("asked %d s: Server Keep Alive %d, want %d", tc.asked, got, tc.want)
		}
		rc.c.Close()
	}

	// Held to it: a client that asked for none and then stays silent is
	// closed after 1.5 × 5 s [MQTT-3.1.2-22]; without the bound it would
	// be kept for ever.
	rc := dialRaw(t, addr)
	rc.connect5("ka-silent", 0)
	for {
		_, _, err := rc.readRaw(20 * time.Second)
		if err == nil {
			continue // $SYS or the like: not for this client, but harmless
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("a silent client was not disconnected at the Server Keep Alive")
		}
		return
	}
}

// TestMQTT_3_2_2_ConnackAnnouncesCapabilities: the CONNACK says what the
// broker does, and the broker keeps its word on the limits it names.
func TestMQTT_3_2_2_ConnackAnnouncesCapabilities(t *testing.T) {
	b, _ := testBroker(t, nil)
	def := DefaultOptions()
	rc := dialRaw(t, b.TCP.Address())
	p := rc.connect5("caps", 30).Properties
	if p == nil {
		t.Fatal("CONNACK without properties")
	}
	u16 := func(v *uint16) int {
		if v == nil {
			return -1
		}
		return int(*v)
	}
	u32 := func(v *uint32) int64 {
		if v == nil {
			return -1
		}
		return int64(*v)
	}
	byt := func(v *byte) int {
		if v == nil {
			return -1
		}
		return int(*v)
	}
	if got := u16(p.ReceiveMaximum); got != int(def.ReceiveMaximum) {
		t.Errorf("Receive Maximum %d, want %d", got, def.ReceiveMaximum)
	}
	if got := u32(p.MaximumPacketSize); got != int64(def.MaxPacketSize) {
		t.Errorf("Maximum Packet Size %d, want %d", got, def.MaxPacketSize)
	}
	if got := u16(p.TopicAliasMaximum); got != 64 {
		t.Errorf("Topic Alias Maximum %d, want 64", got)
	}
	if got := byt(p.MaximumQOS); got != -1 {
		t.Errorf("Maximum QoS %d announced; absent means 2, which the broker supports", got)
	}
	for name, v := range map[string]*byte{"Retain Available": p.RetainAvailable,
		"Wildcard Subscription Available":   p.WildcardSubAvailable,
		"Subscription Identifier Available": p.SubIDAvailable,
		"Shared Subscription Available":     p.SharedSubAvailable} {
		if byt(v) != 1 {
			t.Errorf("%s %d, want 1", name, byt(v))
		}
	}

	// Topic Alias Maximum 64 is kept: alias 64 works, 65 is refused with
	// 0x94 [MQTT-3.3.2-9].
	alias := func(n uint16) *pp.Properties { return &pp.Properties{TopicAlias: &n} }
	rc.send(publish5("conf/alias", 1, 1, "a", alias(64)))
	if _, ok := rc.read(5 * time.Second).Content.(*pp.Puback); !ok {
		t.Fatal("alias 64 not acknowledged")
	}
	rc.send(publish5("conf/alias", 1, 2, "a", alias(65)))
	d, ok := rc.read(5 * time.Second).Content.(*pp.Disconnect)
	if !ok || d.ReasonCode != 0x94 {
		t.Fatalf("alias 65: got %+v, want DISCONNECT 0x94", d)
	}
}

// TestMQTT_3_9_3_SubackRefusesOneFilter: a SUBSCRIBE with a filter the
// identity may not read gets 0x87 for it (3.1.1: 0x80) while the packet's
// other filters are granted and work.
func TestMQTT_3_9_3_SubackRefusesOneFilter(t *testing.T) {
	e := startAuthEnv(t, false)
	pass := e.user(t, "vera", "viewer")
	for _, version := range []byte{4, 5} {
		code, conn := authRawConnectConn(t, e.tcp, version, "vera-sub", "vera", pass)
		if code != 0 {
			t.Fatalf("v%d: CONNACK %#x", version, code)
		}
		rc := &rawClient{t: t, c: conn, r: bufio.NewReader(conn)}
		s := pp.NewControlPacket(pp.SUBSCRIBE)
		sc := s.Content.(*pp.Subscribe)
		sc.PacketID = 3
		if version == 5 {
			sc.Properties = &pp.Properties{}
		}
		sc.Subscriptions = []pp.SubOptions{{Topic: "devices/+/status", QoS: 1}, {Topic: "private/x", QoS: 1}, {Topic: "$SYS/broker/uptime"}}
		// paho's codec writes MQTT 5 SUBSCRIBE options; 3.1.1 has the same
		// bytes for QoS-only options and no property length.
		var buf bytes.Buffer
		if _, err := s.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		raw := buf.Bytes()
		if version == 4 {
			raw = subscribe311(3, "devices/+/status", 1, "private/x", 1, "$SYS/broker/uptime", 0)
		}
		rc.c.Write(raw)
		h, body, err := rc.readRaw(5 * time.Second)
		if err != nil || h>>4 != pp.SUBACK {
			t.Fatalf("v%d: SUBACK %#x %v", version, h, err)
		}
		codes := body[2:]
		if version == 5 {
			codes = body[3+int(body[2]):]
		}
		want := []byte{1, 0x87, 0}
		if version == 4 {
			want = []byte{1, 0x80, 0}
		}
		if !bytes.Equal(codes, want) {
			t.Fatalf("v%d: SUBACK codes % x, want % x", version, codes, want)
		}
		rc.c.Close()
	}
}

// subscribe311 encodes an MQTT 3.1.1 SUBSCRIBE of (filter, qos) pairs.
func subscribe311(id uint16, pairs ...any) []byte {
	var b bytes.Buffer
	b.Write([]byte{byte(id >> 8), byte(id)})
	for i := 0; i < len(pairs); i += 2 {
		f := pairs[i].(string)
		b.Write([]byte{byte(len(f) >> 8), byte(len(f))})
		b.WriteString(f)
		b.WriteByte(byte(pairs[i+1].(int)))
	}
	return append(append([]byte{0x82}, vbi(b.Len())...), b.Bytes()...)
}

// TestMQTT_3_3_2_3_4_TopicAliasChecked: a PUBLISH by topic alias is
// checked against the alias's topic, for an identity that may publish
// only some topics (a device): its own topic by alias is accepted and
// routed; an alias it set with a refused publish of another device's
// topic stands for that topic, and is refused again. The engine checks
// access before it resolves the alias: without Auth.OnPacketRead putting
// the topic back, every aliased publish of a device was refused 0x87 (and
// counted towards a ban). An alias never set: TestMQTT_3_3_2_3_4_AliasNeverSet.
func TestMQTT_3_3_2_3_4_TopicAliasChecked(t *testing.T) {
	e := startAuthEnv(t, false)
	secret := e.device(t, "al-1")
	e.device(t, "al-2")
	admin := e.user(t, "root", devices.RoleAdmin)
	var all authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("devices/#", 1, all.handler))

	code, conn := authRawConnectConn(t, e.tcp, 5, "al-1", "al-1", secret)
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	rc := &rawClient{t: t, c: conn, r: bufio.NewReader(conn)}
	alias := func(n uint16) *pp.Properties { return &pp.Properties{TopicAlias: &n} }
	ack := func(what string) byte {
		t.Helper()
		a, ok := rc.read(5 * time.Second).Content.(*pp.Puback)
		if !ok {
			t.Fatalf("%s: no PUBACK", what)
		}
		return a.ReasonCode
	}
	rc.send(publish5("devices/al-1/telemetry", 1, 1, `{"t":1}`, alias(1)))
	if rc := ack("named"); rc != 0 {
		t.Fatalf("own topic, setting alias 1: PUBACK %#x", rc)
	}
	for i := range 3 {
		rc.send(publish5("", 1, uint16(2+i), `{"t":2}`, alias(1)))
		if rc := ack("by alias"); rc != 0 {
			t.Fatalf("own topic by alias 1: PUBACK %#x, want 0", rc)
		}
	}
	rc.send(publish5("devices/al-2/telemetry", 1, 5, `{"t":"forged"}`, alias(2)))
	if rc := ack("other's"); rc != 0x87 {
		t.Fatalf("another device's topic, setting alias 2: PUBACK %#x, want 0x87", rc)
	}
	rc.send(publish5("", 1, 6, `{"t":"forged"}`, alias(2)))
	if rc := ack("other's by alias"); rc != 0x87 {
		t.Fatalf("another device's topic by alias 2: PUBACK %#x, want 0x87", rc)
	}
	checkFor(t, 5*time.Second, func() error {
		if n := len(all.payloads("devices/al-1/telemetry")); n != 4 {
			return fmt.Errorf("%d of 4 publishes routed", n)
		}
		return nil
	})
	if p := all.payloads("devices/al-2/telemetry"); len(p) != 0 {
		t.Errorf("forged publishes routed: %v", p)
	}
	if p := all.payloads(""); len(p) != 0 {
		t.Errorf("publishes routed to the empty topic: %v", p)
	}
}
