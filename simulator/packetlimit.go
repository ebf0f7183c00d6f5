package simulator

import (
	"errors"
	"fmt"
	"net"
)

// MaxBrokerPacket is the largest MQTT packet (its remaining length) the
// simulator and bench take from a broker: a 1 MiB payload, bench's largest,
// with room for its topic and properties. paho allocates the whole of a
// packet as soon as it has read the packet's length, up to 256 MiB, so
// without this bound a hostile or broken broker made every client hold
// that much with five bytes (twelve bench connections: 3 GB).
const MaxBrokerPacket = 1<<20 + 64<<10

// errPacketTooLarge ends a connection whose broker sent a packet over
// MaxBrokerPacket bytes; errPacketMalformed one whose length field runs
// past the four bytes MQTT allows [MQTT-2.2.3].
var (
	errPacketTooLarge  = errors.New("the broker sent an MQTT packet larger than the simulator accepts")
	errPacketMalformed = errors.New("the broker sent an MQTT packet with a malformed length")
)

// packetLimitConn follows the MQTT packets a broker sends on a connection
// and fails the read that brings the length of one larger than max, before
// paho allocates it. It keeps only the framing: a packet's first byte, its
// remaining length (one to four bytes), then the body, however the reads
// split them.
type packetLimitConn struct {
	net.Conn
	max int

	inLength bool // reading a remaining length
	length   int  // the remaining length read so far
	shift    uint // of the next length byte
	body     int  // body bytes still to come
	err      error
}

func limitPackets(c net.Conn, max int) net.Conn {
	return &packetLimitConn{Conn: c, max: max}
}

func (c *packetLimitConn) Read(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(b)
	if ferr := c.frame(b[:n]); ferr != nil {
		c.err = ferr
		return 0, ferr
	}
	return n, err
}

// frame advances the framing over p, the bytes just read.
func (c *packetLimitConn) frame(p []byte) error {
	for len(p) > 0 {
		switch {
		case c.body > 0:
			k := min(c.body, len(p))
			c.body -= k
			p = p[k:]
		case !c.inLength: // a packet's first byte
			c.inLength, c.length, c.shift = true, 0, 0
			p = p[1:]
		default:
			v := p[0]
			p = p[1:]
			if c.shift == 28 {
				return errPacketMalformed
			}
			c.length |= int(v&0x7f) << c.shift
			c.shift += 7
			if c.length > c.max {
				return fmt.Errorf("%w: more than %d bytes", errPacketTooLarge, c.max)
			}
			if v&0x80 == 0 {
				c.inLength, c.body = false, c.length
			}
		}
	}
	return nil
}

// noteBrokerFault records in errs a connection lost to a packet
// limitPackets refused, so that the run says why its connections drop.
func noteBrokerFault(errs *errorKinds, err error) {
	if errors.Is(err, errPacketTooLarge) || errors.Is(err, errPacketMalformed) {
		errs.note("connection lost", err)
	}
}
