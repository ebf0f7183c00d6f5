package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// packetIDs keeps the packet identifiers a client chooses apart from those
// the engine chooses for the messages it sends the client. The two are
// independent (MQTT 5 section 2.2.1, 3.1.1 section 2.3.1), and both sides
// count from 1. The engine keeps
// both in one inflight store per client, keyed by id, so when a client
// uses an id that the engine has in flight to it (docs/upstream.md,
// "Packet identifiers of both directions in one store"):
//
//   - a QoS 1 or 2 PUBLISH from the client deletes the engine's message
//     in flight: it is never sent again, though unacknowledged, and the
//     hooks are told it was acknowledged (a command marked delivered
//     because its device published something);
//   - a SUBSCRIBE or UNSUBSCRIBE is refused, 0x91 packet identifier in
//     use for every filter (3.1.1 clients get it too, a code they cannot
//     read).
//
// So the gate (gate.read) gives such a packet an id of the engine's own
// choosing
// (Client.NextPacketID, which no message in flight holds and which the
// engine will not give out again until it has used every other id) when
// the client's id is one the engine uses, and gives the answer (PUBACK,
// PUBREC, PUBCOMP, SUBACK, UNSUBACK) the client's id back; a PUBREL for a
// QoS 2 PUBLISH so renumbered is renumbered too. The mapping lives with
// the connection: a QoS 2 exchange so renumbered that the connection
// breaks between PUBREC and PUBREL is not completed on the next one (the
// message itself was delivered at PUBLISH). Packets whose id the engine
// does not use pass as they are, at the cost of one inflight lookup for a
// QoS 1/2 PUBLISH, SUBSCRIBE or UNSUBSCRIBE, and one atomic load for an
// acknowledgement while no connection has an id renumbered.
type packetIDs struct {
	live    atomic.Int64 // renumbered ids awaiting their answer, all clients
	clients sync.Map     // *mqtt.Client -> *clientIDs
}

// clientIDs are one connection's renumbered ids.
type clientIDs struct {
	mu sync.Mutex
	// toClient maps the engine's id to the client's, until the answer
	// (the PUBCOMP for a QoS 2 PUBLISH).
	toClient map[uint16]uint16
	// toEngine maps the client's id of a QoS 2 PUBLISH to the engine's,
	// for its PUBREL.
	toEngine map[uint16]uint16
}

// engineUses reports whether the engine has a message of its own in
// flight to cl with packet id id: a PUBLISH, or the PUBREL of a QoS 2
// one (an id of the client's own QoS 2 PUBLISH awaiting its PUBREL is
// held as the PUBREC sent for it).
func engineUses(cl *mqtt.Client, id uint16) bool {
	pk, ok := cl.State.Inflight.Get(id)
	return ok && (pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel)
}

// in renumbers a packet cl sent, if its id is one the engine uses.
func (p *packetIDs) in(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Pubrel:
		if p.live.Load() == 0 {
			return pk
		}
		if c := p.of(cl); c != nil {
			c.mu.Lock()
			if e, ok := c.toEngine[pk.PacketID]; ok {
				pk.PacketID = e
			}
			c.mu.Unlock()
		}
		return pk
	case packets.Publish:
		if pk.FixedHeader.Qos == 0 {
			return pk
		}
	case packets.Subscribe, packets.Unsubscribe:
	default:
		return pk
	}
	if pk.PacketID == 0 || cl.Net.Inline || !engineUses(cl, pk.PacketID) {
		return pk
	}
	next, err := cl.NextPacketID()
	if err != nil {
		return pk // every id in use: the engine answers as it would have
	}
	e := uint16(next)
	v, _ := p.clients.LoadOrStore(cl, &clientIDs{toClient: map[uint16]uint16{}, toEngine: map[uint16]uint16{}})
	c := v.(*clientIDs)
	c.mu.Lock()
	if _, had := c.toClient[e]; !had {
		p.live.Add(1)
	}
	c.toClient[e] = pk.PacketID
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2 {
		c.toEngine[pk.PacketID] = e
	}
	c.mu.Unlock()
	pk.PacketID = e
	return pk
}

// out gives the engine's answer to a renumbered packet the client's id.
func (p *packetIDs) out(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp, packets.Suback, packets.Unsuback:
	default:
		return pk
	}
	if p.live.Load() == 0 {
		return pk
	}
	c := p.of(cl)
	if c == nil {
		return pk
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	x, ok := c.toClient[pk.PacketID]
	if !ok {
		return pk
	}
	// A PUBREC that accepts a QoS 2 PUBLISH awaits its PUBREL; any other
	// answer ends the exchange.
	if pk.FixedHeader.Type != packets.Pubrec || pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		delete(c.toClient, pk.PacketID)
		if c.toEngine[x] == pk.PacketID {
			delete(c.toEngine, x)
		}
		p.live.Add(-1)
	}
	pk.PacketID = x
	return pk
}

func (p *packetIDs) of(cl *mqtt.Client) *clientIDs {
	if v, ok := p.clients.Load(cl); ok {
		return v.(*clientIDs)
	}
	return nil
}

// forget drops cl's renumbered ids as its connection ends.
func (p *packetIDs) forget(cl *mqtt.Client) {
	if v, ok := p.clients.LoadAndDelete(cl); ok {
		c := v.(*clientIDs)
		c.mu.Lock()
		p.live.Add(-int64(len(c.toClient)))
		c.mu.Unlock()
	}
}
