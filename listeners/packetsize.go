package listeners

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// limitConn enforces a maximum MQTT packet size on the byte stream the
// engine reads, holds back a large CONNECT until all of it has arrived,
// and refuses the packets the engine's decoder would panic on (guard.go).
// It follows the stream's framing (fixed header, remaining length, body)
// without decoding most packets, and learns the protocol version from the
// CONNECT packet.
//
//   - A packet whose total size would exceed max: the engine gets only the
//     bytes before it, then the read fails with packets.ErrPacketTooLarge.
//     The engine checks the size too, but it counts only the remaining
//     length plus one, and closes without telling an MQTT 5 client why.
//   - A CONNECT with more than holdAbove bytes of body reaches the engine
//     only once all of it has arrived, but for its first byte (which the
//     engine checks at once): the engine allocates a packet's whole body
//     as soon as it has read its remaining length, so a header alone (4
//     bytes, before any login) made it hold up to max_packet_size for as
//     long as the client waited (docs/upstream.md, "A packet's body
//     allocated before it arrives"). Held here, it costs what has arrived
//     of it. The packets after it are a logged-in client's, which may send
//     packets that large anyway: they pass as they come (holding them
//     copied each large message once more).
//   - A packet the engine would panic on: the engine gets all of it but
//     its last byte, so that it never decodes it (it decodes a packet once
//     it has read the whole of it), then the read fails with
//     packets.ErrMalformedPacket.
//
// When the engine then closes the connection, an MQTT 5 client is first
// sent DISCONNECT 0x95 or 0x81 [MQTT-3.1.2-24] [MQTT-4.13.1-1].
//
// On the way out, it writes nothing after a DISCONNECT (Write).
type limitConn struct {
	net.Conn
	max uint32 // 0: no limit

	// disconnected: a DISCONNECT has been written; nothing more is.
	disconnected atomic.Bool
	// engineDone runs once the engine is done with the connection
	// (OnEngineDone).
	engineDone atomic.Pointer[func(error)]
	// answered releases the connection's place among its address's
	// connections not logged in (LimitOptions.MaxPendingPerIP) at the
	// broker's first packet, the CONNACK; nil once released.
	answered atomic.Pointer[func()]

	// Read's state: only the engine's read goroutine touches it.
	frame framer
	// held are the bytes read and scanned that the engine has not had;
	// held[0] is at stream offset given. The engine may have those before
	// offset free.
	held        []byte
	given, free int64
	pending     error // the packet refused: the read after free fails with it
	readErr     error // the connection's error, after held bytes

	// mu guards the fields below, shared with Close.
	mu       sync.Mutex
	reported packets.Code // the refusal Read has returned to the engine; 0 for none
	version  byte         // protocol version from CONNECT; 0 until known
}

// holdAbove is the body size above which a CONNECT is held back until it
// has arrived whole: a header that announces no more than this costs the
// engine no more than an idle connection does.
const holdAbove = 4096

func (c *limitConn) Read(p []byte) (int, error) {
	for {
		if n := min(c.free-c.given, int64(len(c.held))); n > 0 {
			k := copy(p, c.held[:n])
			c.held = c.held[k:]
			c.given += int64(k)
			if len(c.held) == 0 {
				c.held = nil
			}
			return k, nil
		}
		if c.pending != nil {
			c.mu.Lock()
			c.reported, _ = c.pending.(packets.Code)
			c.mu.Unlock()
			return 0, c.pending
		}
		if c.readErr != nil {
			return 0, c.readErr
		}
		n, err := c.Conn.Read(p)
		if n == 0 {
			if err != nil && len(c.held) > 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
				// The connection ends: what is held goes to the engine
				// first (an unfinished packet, which ends with it), so
				// that the engine reads the stream as it was sent.
				c.free, c.readErr = c.given+int64(len(c.held)), err
				continue
			}
			return 0, err
		}
		free, refused := c.frame.scan(p[:n], c.max)
		if c.frame.version != 0 {
			c.mu.Lock()
			c.version = c.frame.version
			c.mu.Unlock()
		}
		if len(c.held) == 0 && refused == nil && free == c.given+int64(n) {
			c.given, c.free = free, free // nothing held: the engine reads p as it is
			return n, err
		}
		c.held = append(c.held, p[:n]...)
		c.free = max(free, c.given) // a held packet's header may have begun before
		c.pending, c.readErr = refused, err
		if err != nil && refused == nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.free = c.given + int64(len(c.held)) // the connection ends: as above
		}
	}
}

// Write writes the engine's packets, but nothing after a DISCONNECT
// [MQTT-3.14.4-1]: the engine writes a DISCONNECT, then closes the
// connection, and its writer may write a packet it had queued in between
// (docs/upstream.md, "Packets after DISCONNECT"). The engine writes whole
// packets, one or several at a time. What is not written fails with
// net.ErrClosed, as it would once the connection is closed.
func (c *limitConn) Write(p []byte) (int, error) {
	if c.answered.Load() != nil {
		if f := c.answered.Swap(nil); f != nil {
			(*f)()
		}
	}
	if c.disconnected.Load() {
		return 0, net.ErrClosed
	}
	end, ok := disconnectEnd(p)
	if !ok {
		return c.Conn.Write(p)
	}
	c.disconnected.Store(true)
	n, err := c.Conn.Write(p[:end])
	if err == nil && end < len(p) {
		err = net.ErrClosed
	}
	return n, err
}

// disconnectEnd returns the end of the first DISCONNECT among the whole
// packets in p.
func disconnectEnd(p []byte) (int, bool) {
	for i := 0; i < len(p); {
		typ := p[i] >> 4
		length, shift, j := 0, 0, i+1
		for ; j < len(p) && j < i+5; j++ {
			length |= int(p[j]&0x7f) << shift
			shift += 7
			if p[j]&0x80 == 0 {
				break
			}
		}
		if j >= len(p) || p[j]&0x80 != 0 {
			return 0, false // not whole packets: not the engine's
		}
		next := j + 1 + length
		if typ == packets.Disconnect {
			return min(next, len(p)), true
		}
		i = next
	}
	return 0, false
}

// Flush sends the acknowledgements held below (FlushAcks).
func (c *limitConn) Flush() error {
	FlushAcks(c.Conn)
	return nil
}

// Close tells an MQTT 5 client why its packet was refused, if that is why
// the engine closes the connection, then closes it.
func (c *limitConn) Close() error {
	c.mu.Lock()
	code := c.reported.Code
	tell := code != 0 && c.version == 5
	c.reported = packets.Code{}
	c.mu.Unlock()
	if tell && !c.disconnected.Swap(true) {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Conn.Write([]byte{0xE0, 0x01, code}) // DISCONNECT, no properties [MQTT-3.14.2-1]
	}
	return c.Conn.Close()
}

// framer follows MQTT packet boundaries in a byte stream.
type framer struct {
	stage    int    // stageType, stageLength or stageBody
	first    byte   // the current packet's first byte
	length   uint32 // remaining length being decoded
	shift    uint
	lenBytes uint32
	body     uint32 // body bytes still to come
	lost     bool   // the stream is malformed; stop following it

	off   int64 // stream offset of the next byte to scan
	start int64 // stream offset of the current packet's first byte
	large bool  // the current packet's body is over holdAbove

	packets int    // packets whose header has been read
	connect []byte // the first body bytes of the first packet, up to 16
	version byte   // protocol level from CONNECT; 0 until known

	// The body of the current packet, while it is one the guard checks
	// (guard.go), and the version the engine decodes it with.
	checking bool
	held     []byte
	heldVer  byte
}

const (
	stageType = iota
	stageLength
	stageBody
)

// scan follows p, the stream's next bytes, and returns the stream offset
// before which the engine may have the bytes now: all of them, but for a
// large packet not yet arrived whole, which is held from its remaining
// length on.
// If a packet whose total size exceeds max begins in p (or began earlier
// and its length completes in p), it returns packets.ErrPacketTooLarge
// and the offset of that packet's first byte. If a packet the engine would
// panic on ends in p, it returns packets.ErrMalformedPacket and the offset
// of that packet's last byte. max 0 means no limit.
func (f *framer) scan(p []byte, max uint32) (free int64, refused error) {
	base := f.off
	f.off += int64(len(p))
	for i := 0; i < len(p); i++ {
		if f.lost {
			return f.off, nil
		}
		b := p[i]
		switch f.stage {
		case stageType:
			f.start = base + int64(i)
			f.first = b
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
				return f.start, packets.ErrPacketTooLarge
			}
			f.checking, f.heldVer = guarded(f.first), f.version
			f.held = f.held[:0]
			f.large = f.length > holdAbove && f.packets == 1 // the CONNECT, before any login
			f.body = f.length
			f.stage = stageBody
			if f.body == 0 {
				f.stage = stageType
				if f.refuse() {
					return base + int64(i), packets.ErrMalformedPacket
				}
			}
		case stageBody:
			take := min(uint32(len(p)-i), f.body)
			chunk := p[i : i+int(take)]
			if f.packets == 1 {
				f.readConnect(chunk)
			}
			if f.checking {
				f.held = append(f.held, chunk...)
			}
			f.body -= take
			i += int(take) - 1
			if f.body == 0 {
				f.stage, f.large = stageType, false
				if f.refuse() {
					return base + int64(i), packets.ErrMalformedPacket
				}
			}
		}
	}
	if f.large && f.stage == stageBody {
		// The first byte goes: the engine refuses a packet type or flags
		// out of line at once, and waits for the remaining length.
		return f.start + 1, nil
	}
	return f.off, nil
}

// refuse reports whether the packet whose body has just ended is one the
// engine would panic on; if so the stream is not followed further.
func (f *framer) refuse() bool {
	if !f.checking {
		return false
	}
	f.checking = false
	bad := decodePanics(f.first, f.heldVer, f.held)
	if cap(f.held) > 4096 {
		f.held = nil // a large SUBSCRIBE's buffer is not kept
	}
	if bad {
		f.lost = true
	}
	return bad
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
