package cluster

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"
)

// NATS headers beside an encoded PUBLISH.
const (
	// hdrOrigin names the node where the message was published.
	hdrOrigin = "Tether-Origin"
	// hdrShared lists (base64url) the shared subscriptions
	// ($share/group/filter) the receiving node serves for this message.
	hdrShared = "Tether-Shared"
	// hdrCreated is when a retained message in a copy (retained.go) was
	// published (Unix seconds, the sending node's clock).
	hdrCreated = "Tether-Created"
	// hdrDeleted marks, in a copy, a retained message deleted on the
	// sending node at Tether-Created (a tombstone: retained.go).
	hdrDeleted = "Tether-Deleted"
)

// encodePublish encodes pk as an MQTT 5 PUBLISH with what a subscriber on
// another node must get: topic, payload, QoS, retain flag, and the
// properties a PUBLISH carries end to end (payload format, message
// expiry, content type, response topic, correlation data, user
// properties). Topic aliases and subscription identifiers are this
// node's and stay here.
func encodePublish(pk packets.Packet) ([]byte, error) {
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain},
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		PacketID:    1, // required by the encoding at QoS 1 and 2; never used
		Properties: packets.Properties{
			PayloadFormat:         pk.Properties.PayloadFormat,
			PayloadFormatFlag:     pk.Properties.PayloadFormatFlag,
			MessageExpiryInterval: pk.Properties.MessageExpiryInterval,
			ContentType:           pk.Properties.ContentType,
			ResponseTopic:         pk.Properties.ResponseTopic,
			CorrelationData:       pk.Properties.CorrelationData,
			User:                  pk.Properties.User,
		},
		ProtocolVersion: 5,
		// The engine writes the response topic and correlation data
		// only when told to (for a client that asked for them).
		Mods: packets.Mods{AllowResponseInfo: true},
	}
	if out.FixedHeader.Qos == 0 {
		out.PacketID = 0
	}
	var buf bytes.Buffer
	buf.Grow(len(pk.TopicName) + len(pk.Payload) + 32)
	if err := out.PublishEncode(&buf); err != nil {
		return nil, fmt.Errorf("cluster: encode publish: %w", err)
	}
	return buf.Bytes(), nil
}

// errMalformed: a bus message that is not one PUBLISH.
var errMalformed = errors.New("cluster: malformed message")

// decodePublish decodes what encodePublish made; anything else is an
// error, never a panic.
func decodePublish(b []byte) (packets.Packet, error) {
	var pk packets.Packet
	if len(b) < 2 {
		return pk, errMalformed
	}
	if err := pk.FixedHeader.Decode(b[0]); err != nil || pk.FixedHeader.Type != packets.Publish {
		return pk, errMalformed
	}
	r := bytes.NewReader(b[1:])
	n, _, err := packets.DecodeLength(r)
	if err != nil || n != r.Len() {
		return pk, errMalformed
	}
	pk.ProtocolVersion = 5
	if err := pk.PublishDecode(b[len(b)-n:]); err != nil {
		return pk, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if pk.TopicName == "" || strings.ContainsAny(pk.TopicName, "+#\x00") || pk.Properties.TopicAlias != 0 {
		return pk, errMalformed
	}
	return pk, nil
}

// encodeName and decodeName carry a filter in a header value, which may
// hold no line break.
func encodeName(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func decodeName(s string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return string(b), err == nil
}
