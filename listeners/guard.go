package listeners

import "github.com/mochi-mqtt/server/v2/packets"

// The engine (mochi-mqtt v2.7.9) decodes each packet on the client's own
// goroutine, which recovers no panic: a packet its decoder panics on ends
// the whole process, every client with it. Its SUBSCRIBE decoder does, on
// an MQTT 5 SUBSCRIBE whose last topic filter has no options byte
// (docs/upstream.md, "A SUBSCRIBE the decoder panics on"): eight bytes from any
// client that has connected.
//
// So the packets a client sends a few of per connection (CONNECT,
// SUBSCRIBE, UNSUBSCRIBE, AUTH, DISCONNECT) are decoded a first time by
// limitConn's framer, with the engine's own decoder, before the engine
// has read the packet's last byte; a panic there is recovered, and the
// packet refused (packetsize.go): the engine's read fails, and it ends the
// connection as for any malformed packet, hooks and will included.
// PUBLISH and the acknowledgements, the bulk of the traffic, are not
// decoded twice: fuzzing their decoders (and the whole broker:
// broker.FuzzBrokerStream) found no panic in them.

// guarded reports whether the packet with fixed header byte first is
// decoded by the guard.
func guarded(first byte) bool {
	switch first >> 4 {
	case packets.Connect, packets.Subscribe, packets.Unsubscribe, packets.Auth, packets.Disconnect:
		return true
	}
	return false
}

// decodePanics reports whether the engine's decoder panics on the packet
// with fixed header byte first and body, read from a client of protocol
// version (0 before its CONNECT), as the engine's Client.ReadPacket would
// decode it.
func decodePanics(first, version byte, body []byte) (panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	pk := packets.Packet{ProtocolVersion: version}
	if pk.FixedHeader.Decode(first) != nil {
		return false // the engine refuses the header before it reads the body
	}
	pk.FixedHeader.Remaining = len(body)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		_ = pk.ConnectDecode(body)
	case packets.Subscribe:
		_ = pk.SubscribeDecode(body)
	case packets.Unsubscribe:
		_ = pk.UnsubscribeDecode(body)
	case packets.Auth:
		_ = pk.AuthDecode(body)
	case packets.Disconnect:
		_ = pk.DisconnectDecode(body)
	}
	return false
}
