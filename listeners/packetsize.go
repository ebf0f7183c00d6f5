package listeners

import (
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// disconnectPacketTooLarge is an MQTT 5 DISCONNECT with reason code 0x95
// (packet too large) and no properties [MQTT-3.14.2-1].
var disconnectPacketTooLarge = []byte{0xE0, 0x01, 0x95}

// limitConn enforces a maximum MQTT packet size on the byte stream the
// engine reads. It follows the stream's framing (fixed header, remaining
// length, body) without decoding packets, and learns the protocol version
// from the CONNECT packet. When a packet's total size would exceed max, it
// passes on only the bytes before that packet, then fails the read with
// packets.ErrPacketTooLarge; when the engine then closes the connection, an
// MQTT 5 client is first sent DISCONNECT 0x95 [MQTT-3.1.2-24].
//
// The engine checks the size too, but it counts only the remaining length
// plus one, and closes without telling an MQTT 5 client why.
type limitConn struct {
	net.Conn
	max uint32

	// Read's state: only the engine's read goroutine touches it.
	frame   framer
	pending bool // an oversized packet was found; the next Read fails

	// mu guards the fields below, shared with Close.
	mu       sync.Mutex
	reported bool // Read has returned ErrPacketTooLarge to the engine
	version  byte // protocol version from CONNECT; 0 until known
}

func (c *limitConn) Read(p []byte) (int, error) {
	if c.pending {
		c.mu.Lock()
		c.reported = true
		c.mu.Unlock()
		return 0, packets.ErrPacketTooLarge
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		ok, over := c.frame.scan(p[:n], c.max)
		if c.frame.version != 0 {
			c.mu.Lock()
			c.version = c.frame.version
			c.mu.Unlock()
		}
		if over {
			c.pending = true
			if ok == 0 {
				return c.Read(p)
			}
			return ok, nil
		}
	}
	return n, err
}

// Flush sends the acknowledgements held below (FlushAcks).
func (c *limitConn) Flush() error {
	FlushAcks(c.Conn)
	return nil
}

// Close tells an MQTT 5 client that its packet was too large, if that is
// why the engine closes the connection, then closes it.
func (c *limitConn) Close() error {
	c.mu.Lock()
	tell := c.reported && c.version == 5
	c.reported = false
	c.mu.Unlock()
	if tell {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Conn.Write(disconnectPacketTooLarge)
	}
	return c.Conn.Close()
}

// framer follows MQTT packet boundaries in a byte stream.
type framer struct {
	stage    int    // stageType, stageLength or stageBody
	length   uint32 // remaining length being decoded
	shift    uint
	lenBytes uint32
	body     uint32 // body bytes still to come
	lost     bool   // the stream is malformed; stop following it

	packets int    // packets whose header has been read
	connect []byte // the first body bytes of the first packet, up to 16
	version byte   // protocol level from CONNECT; 0 until known
}

const (
	stageType = iota
	stageLength
	stageBody
)

// scan follows p. If a packet whose total size exceeds max begins in p (or
// began earlier and its length completes in p), it returns over and the
// number of bytes of p before that packet's first byte (0 when the packet
// began in an earlier call). max 0 means no limit.
func (f *framer) scan(p []byte, max uint32) (ok int, over bool) {
	start := 0 // index in p of the current packet's first byte
	for i := 0; i < len(p); i++ {
		if f.lost {
			return len(p), false
		}
		b := p[i]
		switch f.stage {
		case stageType:
			start = i
			f.stage, f.length, f.shift, f.lenBytes = stageLength, 0, 0, 0
		case stageLength:
			f.lenBytes++
			f.length |= uint32(b&0x7f) << f.shift
			f.shift += 7
			if b&0x80 != 0 {
				if f.lenBytes == 4 {
					f.lost = true // malformed: the engine reports it
				}
				continue
			}
			f.packets++
			if max > 0 && uint64(1)+uint64(f.lenBytes)+uint64(f.length) > uint64(max) {
				f.lost = true
				return start, true
			}
			f.body = f.length
			f.stage = stageBody
			if f.body == 0 {
				f.stage = stageType
			}
		case stageBody:
			take := min(uint32(len(p)-i), f.body)
			if f.packets == 1 {
				f.readConnect(p[i : i+int(take)])
			}
			f.body -= take
			i += int(take) - 1
			if f.body == 0 {
				f.stage = stageType
			}
		}
	}
	return len(p), false
}

// readConnect collects the start of CONNECT's variable header: protocol
// name (2-byte length, then the name) and protocol level.
func (f *framer) readConnect(b []byte) {
	if f.version != 0 || len(f.connect) >= 16 {
		return
	}
	f.connect = append(f.connect, b[:min(len(b), 16-len(f.connect))]...)
	if len(f.connect) < 2 {
		return
	}
	at := 2 + (int(f.connect[0])<<8 | int(f.connect[1]))
	if at < len(f.connect) {
		f.version = f.connect[at]
		f.connect = nil
	}
}
