package sessions

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// FuzzStoredMessage feeds the store's message decoder what a damaged or
// foreign database file (a restored backup, say) could hold: it must never
// panic, and what it accepts must survive the engine's conversion and a
// round trip through the encoder. Seeds: testdata/fuzz/FuzzStoredMessage.
//
//	go test -run XXX -fuzz FuzzStoredMessage -fuzztime 30s ./broker/sessions/
func FuzzStoredMessage(f *testing.F) {
	data, payload := encodeMessage("c1", storage.InflightKey, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "devices/d1/commands/reboot", Payload: []byte(`{"id":"x"}`), PacketID: 7,
		Origin: "op", Created: 1700000000,
		Properties: packets.Properties{ResponseTopic: "r", CorrelationData: []byte{1, 2},
			SubscriptionIdentifier: []int{3}, User: []packets.UserProperty{{Key: "k", Val: "v"}}},
	})
	f.Add(data, payload, "1,5,9")
	f.Add([]byte(`{}`), []byte{}, "")
	f.Add([]byte(`{"fixedheader":{"type":3,"qos":9},"packet_id":70000}`), []byte(nil), ",,x,-1")
	f.Fuzz(func(t *testing.T, data, payload []byte, ids string) {
		_ = parseIDs(ids)
		m, err := decodeMessage(data, payload)
		if err != nil {
			return
		}
		pk := m.ToPacket()
		d2, p2 := encodeMessage(m.Client, m.T, pk)
		m2, err := decodeMessage(d2, p2)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if m2.TopicName != m.TopicName || !bytes.Equal(m2.Payload, pk.Payload) || m2.PacketID != m.PacketID {
			t.Fatalf("round trip changed the message: %+v -> %+v", m, m2)
		}
	})
}
