package broker

import (
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// gate refuses new connections while the broker shuts down, tells MQTT 5
// clients the broker's maximum packet size, keeps what goes to 3.1.1
// clients within 3.1.1 (for311), and mends what clients send where the
// engine would mishandle it (read).
type gate struct {
	mqtt.HookBase
	b   *Broker
	ids packetIDs
	// reads: the gate's own OnPacketRead calls read; the access hook's
	// does instead, when it is the Auth hook.
	reads bool
	// published: the gate's own OnPublish checks a PUBLISH's levels
	// (deepPublish); the publish rates' does instead, when it is the
	// first hook with one (broker.New).
	published bool
}

func (g *gate) ID() string { return "tether-gate" }

func (g *gate) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketEncode, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	case mqtt.OnPacketRead:
		return g.reads
	case mqtt.OnPublish:
		return g.published
	}
	return false
}

// OnPacketRead mends a packet a client sent (read).
func (g *gate) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	g.packetRead(cl, &pk)
	return pk, nil
}

// packetRead is OnPacketRead on the packet in place (hookSet).
func (g *gate) packetRead(cl *mqtt.Client, pk *packets.Packet) {
	if readMends(pk) {
		*pk = g.read(cl, *pk)
	}
}

// readMends reports whether read can change pk: a QoS 1 or 2 PUBLISH, a
// PUBLISH of any QoS with a payload of ownTopicPayload or more (its topic
// gets a string of its own), a PUBREL, a SUBSCRIBE or an UNSUBSCRIBE. The
// rest, small QoS 0 PUBLISH packets above all, skip it, and the copies of
// the packet in and out of its steps (TestReadMends,
// BenchmarkRoutedQoS0Hooks).
func readMends(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return pk.FixedHeader.Qos > 0 || len(pk.Payload) >= ownTopicPayload
	case packets.Pubrel, packets.Subscribe, packets.Unsubscribe:
		return true
	}
	return false
}

// read mends a packet a client sent before the engine acts on it: an id
// the engine uses for a message of its own becomes one of the engine's
// (packetIDs), an UNSUBSCRIBE's filters the client does not hold
// become none at all (unheld), and a SUBSCRIBE's filters with too many
// levels become invalid ones (deepSubscribe). Callers call it only for
// the packets readMends reports.
func (g *gate) read(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Publish && len(pk.Payload) >= ownTopicPayload {
		pk.TopicName = strings.Clone(pk.TopicName) // not a view of the whole packet (ownTopicPayload)
	}
	return g.deepSubscribe(cl, unheld(cl, g.ids.in(cl, pk)))
}

// noFilter is a topic filter no subscription and no topic can have: a
// string with a NUL, which the engine's decoder refuses in any filter or
// topic [MQTT-1.5.4-2].
const noFilter = "\x00"

// unheld gives each filter of an UNSUBSCRIBE that cl's session does not
// hold the filter noFilter. The engine's index reports a filter as
// unsubscribed whenever it has a node for it (someone else subscribes to
// it, or a message is retained on it), so an UNSUBSCRIBE of a filter the
// client never had got 0x00 instead of 0x11 no subscription existed, and
// took one off the count of subscriptions (mqtt_subscriptions,
// $SYS/broker/subscriptions), which went below zero
// (docs/upstream.md, "Unsubscribing what was never subscribed").
func unheld(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Unsubscribe {
		return pk
	}
	for i, f := range pk.Filters {
		if _, ok := cl.State.Subscriptions.Get(f.Filter); !ok {
			pk.Filters[i].Filter = noFilter
		}
	}
	return pk
}

// OnDisconnect forgets the connection's renumbered packet ids.
func (g *gate) OnDisconnect(cl *mqtt.Client, err error, expire bool) { g.ids.forget(cl) }

// OnClientExpired takes an expired session's subscriptions out of the
// engine's index. The engine drops the session from its clients but
// leaves its subscriptions in the index and in its count: a new session
// with the same client id, even a clean one, got the messages of
// subscriptions it never made [MQTT-3.1.2-4], and the index and
// tether_mqtt_subscriptions grew with every expired session
// (docs/upstream.md, "Expired sessions' subscriptions stay"). The
// session's own list is left for the hooks after this one (the session
// store reads it to forget them).
func (g *gate) OnClientExpired(cl *mqtt.Client) {
	for filter := range cl.State.Subscriptions.GetAll() {
		if g.b.Server.Topics.Unsubscribe(filter, cl.ID) {
			atomic.AddInt64(&g.b.Server.Info.Subscriptions, -1)
		}
	}
}

// OnConnect refuses a CONNECT once Shutdown has begun, with CONNACK
// "server unavailable" (0x88; 0x03 for 3.1.1): the engine then closes the
// connection without attaching it. It refuses an MQTT 5 CONNECT that asks
// for enhanced authentication (an Authentication Method) with 0x8C bad
// authentication method: the broker has none, and the engine would
// accept the client on its password alone, with a CONNACK that a client
// waiting for its method's exchange cannot take as an answer
// [MQTT-4.12.0-1].
func (g *gate) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if g.b.closing.Load() {
		_ = Refuse(g.b.Server, cl, packets.ErrServerUnavailable)
		return errShuttingDown
	}
	if pk.Properties.AuthenticationMethod != "" {
		return Refuse(g.b.Server, cl, packets.ErrBadAuthenticationMethod)
	}
	if err := g.deepWill(cl, pk); err != nil {
		return err
	}
	g.boundKeepalive(cl)
	g.boundAliases(cl)
	return nil
}

// boundAliases holds the topic aliases the broker sends a client to the
// number it takes from clients (Capabilities: 64): the engine uses as
// many as the client's CONNECT allows, up to 65,535, and keeps each
// alias's topic for as long as the connection lasts.
func (g *gate) boundAliases(cl *mqtt.Client) {
	max := g.b.Server.Options.Capabilities.TopicAliasMaximum
	if cl.Properties.Props.TopicAliasMaximum > max {
		cl.Properties.Props.TopicAliasMaximum = max
		cl.State.TopicAliases.Outbound = mqtt.NewOutboundTopicAliases(max)
	}
}

// boundKeepalive holds an MQTT 5 client that asks for no keep alive, or
// for more than mqtt.max_keepalive, to the maximum: the engine puts it in
// the CONNACK as Server Keep Alive and closes the connection after 1.5
// times it without a packet [MQTT-3.2.2.3.14] [MQTT-3.1.2-21]
// [MQTT-3.1.2-22]. An MQTT 3.1.1 CONNACK cannot tell a client, so 3.1.1
// clients keep their own choice rather than being dropped while they
// follow it.
func (g *gate) boundKeepalive(cl *mqtt.Client) {
	max := uint16(g.b.opts.MaxKeepalive / time.Second)
	if max == 0 || cl.Properties.ProtocolVersion < 5 {
		return
	}
	if ka := cl.State.Keepalive; ka == 0 || ka > max {
		cl.State.Keepalive = max
		cl.State.ServerKeepalive = true
	}
}

// OnPacketEncode completes a successful MQTT 5 CONNACK with what the
// engine leaves out, so that it announces what the broker really does and
// strict clients can hold it to its word [MQTT-3.2.2-15]: Maximum Packet
// Size, Topic Alias Maximum (absent would mean 0, no aliases), and Retain,
// Wildcard, Subscription Identifier and Shared Subscription Available
// stated outright. Receive Maximum and Maximum QoS (when below 2) the
// engine sets itself. What goes to any other client passes through
// for311. An answer to a packet renumbered on its way in gets the
// client's packet id back (packetIDs).
func (g *gate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	g.packetEncode(cl, &pk)
	return pk
}

// packetEncode is OnPacketEncode on the packet in place (hookSet).
func (g *gate) packetEncode(cl *mqtt.Client, pk *packets.Packet) {
	// First: a large QoS 0 message the send queue counted is no longer
	// queued (sendqueue.go). One field load for any other packet.
	if pk.Ignore && g.b.sendq != nil {
		g.b.sendq.written(cl, pk)
	}
	if pk.FixedHeader.Type == packets.Publish {
		// A PUBLISH, QoS 0 ones above all, passes as it is: nothing
		// below changes one (ids.out renumbers answers; for311 changes
		// DISCONNECT, CONNACK and SUBACK packets; the rest is a CONNACK's).
		return
	}
	*pk = g.encodeOther(cl, *pk)
}

// encodeOther is OnPacketEncode for a packet other than a PUBLISH.
func (g *gate) encodeOther(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	pk = g.ids.out(cl, pk)
	if cl.Properties.ProtocolVersion != 5 {
		return for311(cl, pk)
	}
	if pk.FixedHeader.Type != packets.Connack || pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		return pk
	}
	caps := g.b.Server.Options.Capabilities
	if g.b.opts.MaxPacketSize > 0 {
		pk.Properties.MaximumPacketSize = g.b.opts.MaxPacketSize
	}
	pk.Properties.TopicAliasMaximum = caps.TopicAliasMaximum
	pk.Properties.RetainAvailable, pk.Properties.RetainAvailableFlag = caps.RetainAvailable, true
	pk.Properties.WildcardSubAvailable, pk.Properties.WildcardSubAvailableFlag = caps.WildcardSubAvailable, true
	pk.Properties.SubIDAvailable, pk.Properties.SubIDAvailableFlag = caps.SubIDAvailable, true
	pk.Properties.SharedSubAvailable, pk.Properties.SharedSubAvailableFlag = caps.SharedSubAvailable, true
	return pk
}

// for311 keeps what the engine writes to a client of MQTT 3.1.1 or 3.1
// (or of a version the broker does not speak, which the engine answers in
// 3.1.1's format) within what 3.1.1 has. The engine sends such clients
// MQTT 5 packets in places: a DISCONNECT (when it refuses a publish at
// QoS 1 or 2, when the client passes the receive maximum, when its
// session is taken over, at Close), which 3.1.1 has only from the client,
// CONNACK reason codes above 5 (0x82 for a reserved flag, a will flag out
// of line or an unknown protocol level; 0x80 for an empty client id with
// clean session 0), and SUBACK reason codes other than 0, 1, 2 and 0x80
// (0x91 packet identifier in use), which a 3.1.1 client cannot read. So:
//
//   - a DISCONNECT is not sent: the connection is closed, as the engine
//     closes it right after the DISCONNECT anyway;
//   - a refusing CONNACK gets the 3.1.1 return code of its reason
//     (connackCode311) or, for a malformed or protocol-violating CONNECT,
//     which 3.1.1 answers with no CONNACK, the connection is closed
//     instead [MQTT-3.1.2-3] [MQTT-4.8.0-1];
//   - a SUBACK's refusals are 0x80 failure [MQTT-3.9.3-2].
//
// Closing before the write makes the write fail: the engine then ends
// the connection as it would have after writing it.
func for311(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch {
	case pk.FixedHeader.Type == packets.Disconnect:
		cl.Stop(packets.Code{Code: pk.ReasonCode, Reason: pk.Properties.ReasonString})
	case pk.FixedHeader.Type == packets.Connack && pk.ReasonCode >= packets.ErrUnspecifiedError.Code:
		if code, ok := connackCode311(pk.ReasonCode, pk.Properties.ReasonString); ok {
			pk.ReasonCode = code
		} else {
			cl.Stop(packets.Code{Code: pk.ReasonCode, Reason: pk.Properties.ReasonString})
		}
	case pk.FixedHeader.Type == packets.Suback:
		for i, c := range pk.ReasonCodes {
			if c > packets.CodeGrantedQos2.Code {
				pk.ReasonCodes[i] = packets.ErrUnspecifiedError.Code
			}
		}
	}
	return pk
}

// connackCode311 is the MQTT 3.1.1 CONNACK return code for an MQTT 5
// refusal with code and reason [MQTT-3.2.2-4]; ok is false when 3.1.1 has
// none (a malformed or protocol-violating CONNECT).
func connackCode311(code byte, reason string) (byte, bool) {
	switch code {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return packets.Err3UnsupportedProtocolVersion.Code, true
	case packets.ErrProtocolViolation.Code:
		if reason == packets.ErrProtocolViolationProtocolVersion.Reason {
			return packets.Err3UnsupportedProtocolVersion.Code, true // [MQTT-3.1.2-2]
		}
		return 0, false
	case packets.ErrUnspecifiedError.Code:
		// The engine's only refusal with it: an empty client id with
		// clean session 0 [MQTT-3.1.3-8].
		return packets.Err3ClientIdentifierNotValid.Code, true
	case packets.ErrClientIdentifierNotValid.Code:
		return packets.Err3ClientIdentifierNotValid.Code, true
	case packets.ErrBadUsernameOrPassword.Code, packets.ErrNotAuthorized.Code, packets.ErrBanned.Code, packets.ErrBadAuthenticationMethod.Code,
		packets.ErrTopicNameInvalid.Code: // a will topic refused (mqtt.max_topic_levels), as a will it may not publish
		return packets.Err3NotAuthorized.Code, true
	case packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrServerShuttingDown.Code,
		packets.ErrQuotaExceeded.Code, packets.ErrConnectionRateExceeded.Code:
		return packets.Err3ServerUnavailable.Code, true
	}
	return 0, false
}

// policy is the access hook used when no registry is wired in: everyone
// may do anything when anonymous access is allowed, and nobody may connect
// otherwise (CONNACK "not authorized": 0x87 for MQTT 5, 0x05 for 3.1.1).
type policy struct {
	mqtt.HookBase
	allow bool
	srv   *mqtt.Server
}

func (p *policy) ID() string { return "tether-policy" }

// Provides is asked before every event, per message: a switch, not the
// engine's examples' bytes.Contains over a fresh slice.
func (p *policy) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck:
		return true
	}
	return false
}

// OnConnect refuses every client with "not authorized" unless anonymous
// access is allowed.
func (p *policy) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if p.allow {
		return nil
	}
	return Refuse(p.srv, cl, packets.ErrNotAuthorized)
}

func (p *policy) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return p.allow
}

func (p *policy) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return p.allow
}

// Refuse sends a CONNACK with code (the gate hook gives an older client
// its MQTT 3.1.1 return code: for311) and returns the error that makes
// the engine close the connection. Use it from an OnConnect hook.
func Refuse(srv *mqtt.Server, cl *mqtt.Client, code packets.Code) error {
	_ = srv.SendConnack(cl, code, false, nil)
	return code
}
