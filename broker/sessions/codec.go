package sessions

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The store keeps mochi's own storage types as JSON, so its loaders hand
// the engine exactly what the engine's other storage hooks would.

// persistent reports whether cl's session outlives its connection: MQTT 5
// with a Session Expiry Interval above 0, or 3.1.1 without clean session.
// Only such sessions are written.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// sessionExpiry is how long cl's session is kept after it disconnects, as
// the engine's clearExpiredClients reckons it.
func sessionExpiry(cl *mqtt.Client, caps *mqtt.Capabilities) int64 {
	e := caps.MaximumSessionExpiryInterval
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		e = min(e, cl.Properties.Props.SessionExpiryInterval)
	}
	return int64(e)
}

func encodeClient(cl *mqtt.Client) []byte {
	p := cl.Properties.Props
	c := storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			AuthenticationMethod:      p.AuthenticationMethod,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			User:                      p.User,
			MaximumPacketSize:         p.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
	b, _ := json.Marshal(c) // plain data: cannot fail
	return b
}

func encodeSubscription(client string, sub packets.Subscription, qos byte) []byte {
	b, _ := json.Marshal(storage.Subscription{
		T:                 storage.SubscriptionKey,
		Client:            client,
		Filter:            sub.Filter,
		Identifier:        sub.Identifier,
		RetainHandling:    sub.RetainHandling,
		Qos:               qos,
		RetainAsPublished: sub.RetainAsPublished,
		NoLocal:           sub.NoLocal,
	})
	return b
}

// encodeMessage returns pk as a storage.Message for client (empty for a
// message not yet given to a session), with its payload apart.
func encodeMessage(client, kind string, pk packets.Packet) (data, payload []byte) {
	p := pk.Properties
	m := storage.Message{
		T:           kind,
		Client:      client,
		Origin:      pk.Origin,
		PacketID:    pk.PacketID,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          p.PayloadFormat,
			PayloadFormatFlag:      p.PayloadFormatFlag,
			MessageExpiryInterval:  p.MessageExpiryInterval,
			ContentType:            p.ContentType,
			ResponseTopic:          p.ResponseTopic,
			CorrelationData:        p.CorrelationData,
			SubscriptionIdentifier: p.SubscriptionIdentifier,
			User:                   p.User,
			// TopicAlias is left out: an alias means nothing on another
			// connection.
		},
	}
	m.FixedHeader.Remaining = 0
	data, _ = json.Marshal(m)
	payload = pk.Payload
	if payload == nil {
		payload = []byte{}
	}
	return data, payload
}

func decodeMessage(data, payload []byte) (storage.Message, error) {
	var m storage.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("decode stored message: %w", err)
	}
	m.Payload = payload
	return m, nil
}

// formatIDs and parseIDs keep subscription identifiers as "1,5,9".
func formatIDs(ids []int) string {
	var sb strings.Builder
	for i, id := range ids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(id))
	}
	return sb.String()
}

func parseIDs(s string) []int {
	if s == "" {
		return nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}
