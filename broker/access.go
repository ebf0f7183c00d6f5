package broker

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// gate refuses new connections while the broker shuts down, and tells
// MQTT 5 clients the broker's maximum packet size.
type gate struct {
	mqtt.HookBase
	b *Broker
}

func (g *gate) ID() string { return "tether-gate" }

func (g *gate) Provides(b byte) bool { return b == mqtt.OnConnect || b == mqtt.OnPacketEncode }

// OnConnect refuses a CONNECT once Shutdown has begun, with CONNACK
// "server unavailable" (0x88; 0x03 for 3.1.1): the engine then closes the
// connection without attaching it.
func (g *gate) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if g.b.closing.Load() {
		_ = Refuse(g.b.Server, cl, packets.ErrServerUnavailable)
		return errShuttingDown
	}
	g.boundKeepalive(cl)
	return nil
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
// engine sets itself.
func (g *gate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Connack || pk.ReasonCode >= packets.ErrUnspecifiedError.Code ||
		cl.Properties.ProtocolVersion != 5 {
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

// Refuse sends a CONNACK with code (mapped to its MQTT 3.1.1 return code
// for older clients [MQTT-3.2.2-4]) and returns the error that makes the
// engine close the connection. Use it from an OnConnect hook.
func Refuse(srv *mqtt.Server, cl *mqtt.Client, code packets.Code) error {
	if cl.Properties.ProtocolVersion < 5 {
		switch code {
		case packets.ErrNotAuthorized, packets.ErrBadUsernameOrPassword, packets.ErrBanned:
			code = packets.Err3NotAuthorized
		case packets.ErrServerBusy, packets.ErrServerUnavailable, packets.ErrServerShuttingDown,
			packets.ErrConnectionRateExceeded, packets.ErrQuotaExceeded:
			code = packets.Err3ServerUnavailable
		}
		// SendConnack sends codes below 0x80 as success; 3.1.1 refusals
		// are written directly.
		if code.Code < packets.ErrUnspecifiedError.Code {
			_ = cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Connack},
				ReasonCode:  code.Code,
			})
			return code
		}
	}
	_ = srv.SendConnack(cl, code, false, nil)
	return code
}
