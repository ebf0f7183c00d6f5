package broker

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestReadMends: the packets the gate's read mends are those readMends
// reports, so that the others (QoS 0 PUBLISH packets above all) can skip
// it: each packet type in turn, from a client the engine has a message
// in flight to with packet id 1, with filters too deep or not held. A
// PUBLISH leaves OnPacketEncode as it came, to clients of both versions.
func TestReadMends(t *testing.T) {
	o := DefaultOptions()
	o.AllowAnonymous = true
	o.Logger = storeLogger()
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{b: b}
	cl := b.Server.NewClient(nil, "tcp", "c1", false)
	cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1})
	deep := strings.Repeat("a/", o.MaxTopicLevels) + "a"
	packet := func(typ, qos byte) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: typ, Qos: qos}, ProtocolVersion: 4, PacketID: 1,
			TopicName: "a/b", Payload: []byte("x"), Filters: packets.Subscriptions{{Filter: deep}, {Filter: "not/held"}}}
	}
	for _, c := range []struct {
		name      string
		typ, qos  byte
		mends     bool
		mendsHere bool // read changes this one here
	}{
		{"PUBLISH QoS 0", packets.Publish, 0, false, false},
		{"PUBLISH QoS 1", packets.Publish, 1, true, true},
		{"PUBLISH QoS 2", packets.Publish, 2, true, true},
		{"PUBREL", packets.Pubrel, 1, true, true}, // of the QoS 2 PUBLISH renumbered just above
		{"SUBSCRIBE", packets.Subscribe, 1, true, true},
		{"UNSUBSCRIBE", packets.Unsubscribe, 1, true, true},
		{"CONNECT", packets.Connect, 0, false, false},
		{"PUBACK", packets.Puback, 0, false, false},
		{"PUBREC", packets.Pubrec, 0, false, false},
		{"PUBCOMP", packets.Pubcomp, 0, false, false},
		{"PINGREQ", packets.Pingreq, 0, false, false},
		{"DISCONNECT", packets.Disconnect, 0, false, false},
		{"AUTH", packets.Auth, 0, false, false},
	} {
		pk := packet(c.typ, c.qos)
		if got := readMends(&pk); got != c.mends {
			t.Errorf("%s: readMends %v, want %v", c.name, got, c.mends)
		}
		mended := !reflect.DeepEqual(g.read(cl, packet(c.typ, c.qos)), packet(c.typ, c.qos))
		if mended && !readMends(&pk) {
			t.Errorf("%s: read changes it, but readMends says it need not be read", c.name)
		}
		if mended != c.mendsHere {
			t.Errorf("%s: read changed it: %v, want %v", c.name, mended, c.mendsHere)
		}
		if pk, err := g.OnPacketRead(cl, packet(c.typ, c.qos)); err != nil || !c.mends && !reflect.DeepEqual(pk, packet(c.typ, c.qos)) {
			t.Errorf("%s: the gate's OnPacketRead changed a packet it need not read: %+v %v", c.name, pk, err)
		}
	}
	// A large QoS 0 PUBLISH is read: its topic gets a string of its own
	// (sendqueue.go, ownTopicPayload), not a view of the whole packet.
	big := packet(packets.Publish, 0)
	big.Payload = make([]byte, ownTopicPayload)
	if !readMends(&big) {
		t.Errorf("PUBLISH QoS 0 of %d bytes: readMends false, want true (its topic must be copied)", len(big.Payload))
	}
	if pk, _ := g.OnPacketRead(cl, big); unsafe.StringData(pk.TopicName) == unsafe.StringData(big.TopicName) {
		t.Errorf("PUBLISH QoS 0 of %d bytes: the topic is still the packet's", len(big.Payload))
	}
	for _, v := range []byte{4, 5} {
		to := b.Server.NewClient(nil, "tcp", "c2", false)
		to.Properties.ProtocolVersion = v
		for qos := range byte(3) {
			pk := packet(packets.Publish, qos)
			pk.Filters = nil
			if got := g.OnPacketEncode(to, pk); !reflect.DeepEqual(got, pk) {
				t.Errorf("version %d: OnPacketEncode changed a QoS %d PUBLISH: %+v", v, qos, got)
			}
		}
	}
}
