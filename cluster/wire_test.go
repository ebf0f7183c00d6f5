package cluster

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestWireRoundTrip: what a subscriber on another node must get survives
// encoding; a node's own alias and subscription ids do not travel.
func TestWireRoundTrip(t *testing.T) {
	in := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Retain: true},
		TopicName:   "a.b/*/> c",
		Payload:     []byte("payload"),
		PacketID:    77,
		Properties: packets.Properties{
			ContentType: "text/plain", ResponseTopic: "r/t", CorrelationData: []byte{0, 1},
			MessageExpiryInterval: 60, PayloadFormat: 1, PayloadFormatFlag: true,
			User:       []packets.UserProperty{{Key: "k", Val: "v"}},
			TopicAlias: 3, SubscriptionIdentifier: []int{9},
		},
	}
	b, err := encodePublish(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodePublish(b)
	if err != nil {
		t.Fatal(err)
	}
	p := out.Properties
	if out.TopicName != in.TopicName || string(out.Payload) != "payload" || out.FixedHeader.Qos != 2 || !out.FixedHeader.Retain ||
		p.ContentType != "text/plain" || p.ResponseTopic != "r/t" || string(p.CorrelationData) != "\x00\x01" ||
		p.MessageExpiryInterval != 60 || p.PayloadFormat != 1 || len(p.User) != 1 || p.User[0].Val != "v" ||
		p.TopicAlias != 0 || len(p.SubscriptionIdentifier) != 0 {
		t.Fatalf("after the round trip: %+v", out)
	}
}
