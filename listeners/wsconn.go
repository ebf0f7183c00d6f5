package listeners

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tether-iot/tether/internal/wsframe"
)

// wsReadBufferSize is the read buffer of a WebSocket connection, under
// the engine's own (mqtt.read_buffer_size): it holds frame headers and
// small frames; larger payloads are read straight into the engine's
// buffer. net/http's is 4 KiB.
const wsReadBufferSize = 1024

// wsConn is the MQTT byte stream of a WebSocket connection, as the engine
// reads and writes it: binary messages in, each Write one binary message
// out, the way coder/websocket's NetConn does it, but with the deadlines
// of the hijacked socket itself. NetConn keeps two contexts and two timers
// per connection and registers a context callback for every message read
// and written (it carries deadlines on them); the engine sets a read
// deadline for every packet, which NetConn turns into a timer reset.
// Here a deadline is the socket's, which the runtime's poller keeps, and
// coder/websocket is called with a context that is never done.
//
// A Read goes on past the end of a WebSocket message into the next ones
// that are already whole in the read buffer, so that the engine sees a
// client's burst of packets (one per message, as clients send them) in
// one read and the acknowledgements it writes go out in one write
// (ackConn), as over TCP.
//
// A Write frames its binary message itself and writes it to the socket
// in one write (wsOut), past coder/websocket's writer (its two
// channel locks, close-state checks and the copy into its buffer per
// message: BenchmarkWebSocketWrite); coder/websocket still writes the
// control frames (pongs, close) through the same wsOut, frame by frame.
// With compression coder/websocket writes everything.
type wsConn struct {
	ws     *websocket.Conn
	raw    net.Conn      // the hijacked connection: deadlines and the local address
	remote net.Addr      // the client's address (WebSocket.remoteAddr)
	out    *wsOut        // the socket's write side; nil: write through coder/websocket (compression)
	br     *bufio.Reader // coder/websocket's read buffer, to look ahead; nil: do not (compression)
	// src is what br reads from; nil: no raw reads (compression).
	src *wsSource
	// pend is the start of a binary frame cut short at the end of a raw
	// read, completed by the next (readRaw).
	pend []byte

	// rmu is held by Read: Close then does not touch the read buffer
	// (closing handshake) while Read does.
	rmu sync.Mutex
	r   io.Reader // the current message; nil between messages
	// whole: the current message is a single frame that was whole in the
	// buffer when it was opened, so reading on does not wait for input.
	whole bool
	eof   bool  // the peer closed normally
	err   error // a read error, returned once what was read before it has been
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for c.src != nil && c.r == nil && c.err == nil && !c.eof && len(p) > 0 &&
		c.br.Buffered() == 0 && len(c.src.carry) == 0 {
		// Between messages with nothing buffered: read the socket
		// straight into p, as much as the engine asks for (as over TCP),
		// rather than through the small read buffer, which would take a
		// client's burst in slices of wsReadBufferSize: twice the reads,
		// and twice the acknowledgement writes (ackConn), of TCP.
		if n := c.readRaw(p); n > 0 {
			return n, nil
		}
		if len(c.pend) == 0 {
			// No whole message came: what came is in src.carry, for
			// the buffered path below (an error is met there again).
			break
		}
		// Only the start of a frame came, and it is kept in pend.
	}
	n := 0
	for n < len(p) && c.err == nil && !c.eof {
		if c.r == nil {
			if n == 0 && c.br != nil {
				// Wait for input here rather than in Reader, so that a
				// burst that has arrived is seen whole from its first
				// message. An error is left for Reader to meet again.
				_, _ = c.br.Peek(2)
			}
			head, size, whole := c.nextWhole()
			if n > 0 && !whole {
				break // the next message is not all here: hand over what is
			}
			if whole && size <= len(p)-n {
				// The common case: read it here, past coder/websocket's
				// message reader (its locks, frame header struct and
				// reader set-up per message; BenchmarkWebSocketRead).
				// Only a whole, masked, final binary frame with no
				// message open is taken, so coder/websocket's state is
				// that of a reader between messages, as before.
				b, _ := c.br.Peek(head + size)
				wsframe.Mask(p[n:n+size], b[head:head+size], [4]byte(b[head-4:head]))
				_, _ = c.br.Discard(head + size)
				n += size
				continue
			}
			typ, r, err := c.ws.Reader(context.Background())
			if err != nil {
				switch websocket.CloseStatus(err) {
				case websocket.StatusNormalClosure, websocket.StatusGoingAway:
					c.eof = true
				default:
					c.err = err
				}
				break
			}
			if typ != websocket.MessageBinary {
				// [MQTT-6.0.0-1] MQTT is sent in binary messages.
				c.err = fmt.Errorf("unexpected frame type read (expected %v): %v", websocket.MessageBinary, typ)
				c.ws.Close(websocket.StatusUnsupportedData, c.err.Error())
				break
			}
			c.r, c.whole = r, whole
		}
		m, err := c.r.Read(p[n:])
		n += m
		if err == io.EOF {
			c.r = nil
			continue
		}
		if err != nil {
			c.err = err
			break
		}
		if m > 0 && !c.whole {
			break // the rest of this message may still be on its way
		}
	}
	switch {
	case n > 0 || len(p) == 0:
		return n, nil
	case c.err != nil:
		return 0, c.err
	}
	return 0, io.EOF
}

// readRaw reads the socket into p, and turns the whole frames at its
// start that nextWhole would take (unfragmented, uncompressed, masked
// binary messages) into their payloads, in place; it returns the payload
// bytes. A frame of that kind cut short at the end of the read, that
// would fit p whole, is kept (pend) and completed by the next read, as
// TCP's stream is; from any other frame on (a control frame, one larger
// than p, anything coder/websocket is to see) the bytes go to src.carry,
// which br reads before the socket: they reach coder/websocket in order,
// as if read through br. It returns 0 when no whole frame came (what
// came is then in src.carry, or pend with nothing read): a read error
// is left for the buffered path, which reads the socket again and meets
// it.
func (c *wsConn) readRaw(p []byte) int {
	k := len(c.pend)
	if k >= len(p) {
		// The engine asks for less than the frame begun: coder/websocket
		// takes the frame over.
		c.src.putBack(c.pend)
		c.pend = c.pend[:0]
		return 0
	}
	copy(p, c.pend)
	c.pend = c.pend[:0]
	m, _ := c.raw.Read(p[k:])
	if m <= 0 {
		if k > 0 {
			c.src.putBack(p[:k])
		}
		return 0
	}
	m += k
	out, used := 0, 0
	for used < m {
		head, size, whole := frameHead(p[used:m], m-used)
		if !whole {
			break
		}
		key := [4]byte(p[used+head-4 : used+head]) // the payload moves over it
		wsframe.Mask(p[out:out+size], p[used+head:used+head+size], key)
		out += size
		used += head + size
	}
	switch tail := p[used:m]; {
	case len(tail) == 0:
	case fitsWhole(tail, len(p)):
		c.pend = append(c.pend, tail...)
	default:
		c.src.putBack(tail)
	}
	return out
}

// fitsWhole reports whether b, the start of a frame that is not whole,
// may be an unfragmented, masked binary frame no longer than n bytes in
// all (its length may not be known yet).
func fitsWhole(b []byte, n int) bool {
	if b[0] != 0x82 {
		return false
	}
	if len(b) < 2 {
		return true
	}
	if b[1]&0x80 == 0 {
		return false
	}
	size := int64(b[1] & 0x7f)
	head := 6
	switch size {
	case 126:
		head = 8
		if len(b) < 4 {
			return true
		}
		size = int64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		return false // 64 KiB or more: larger than any engine read
	}
	return int64(head)+size <= int64(n)
}

// nextWhole reports whether the read buffer holds the whole next frame,
// and it is an unfragmented, uncompressed, masked binary message: reading
// it does not wait for input. head is the frame header's length (mask key
// included), size the payload's.
func (c *wsConn) nextWhole() (head, size int, whole bool) {
	if c.br == nil {
		return 0, 0, false
	}
	k := c.br.Buffered()
	if k < 2 {
		return 0, 0, false
	}
	b, _ := c.br.Peek(min(k, 14))
	return frameHead(b, k)
}

// frameHead reads the frame header at the start of b, of which k bytes
// are at hand (b may hold only the first of them), and reports whether
// the frame is whole in those k bytes and an unfragmented, uncompressed,
// masked binary message. head is the header's length (mask key
// included), size the payload's.
func frameHead(b []byte, k int) (head, size int, whole bool) {
	// FIN, no RSV bits, binary; masked, as a client's frames must be (an
	// unmasked one is left to coder/websocket, which refuses it).
	if len(b) < 2 || b[0] != 0x80|wsframe.OpBinary || b[1]&0x80 == 0 {
		return 0, 0, false
	}
	h, head, ok := wsframe.Parse(b)
	if !ok || uint64(k-head) < h.Len {
		return 0, 0, false
	}
	return head, int(h.Len), true
}

// wsSource is what a WebSocket connection's read buffer (br, which
// coder/websocket reads through) reads from: the bytes a raw read put
// back (wsConn.readRaw) or that came with the upgrade request, then the
// socket. Only the goroutine holding wsConn.rmu uses it.
type wsSource struct {
	conn  net.Conn
	carry []byte
}

func (s *wsSource) Read(p []byte) (int, error) {
	if len(s.carry) == 0 {
		return s.conn.Read(p)
	}
	n := copy(p, s.carry)
	s.carry = s.carry[n:]
	if len(s.carry) == 0 {
		if cap(s.carry) > maxKeptCarry {
			s.carry = nil // a large put-back is not kept
		} else {
			s.carry = s.carry[:0:cap(s.carry)]
		}
	}
	return n, nil
}

// srcConn is a connection that reads through its wsSource.
type srcConn struct {
	net.Conn
	src *wsSource
}

func (c *srcConn) Read(p []byte) (int, error) { return c.src.Read(p) }

// maxKeptCarry bounds the put-back array a connection keeps between uses
// (the end of a burst cut mid-frame is usually one short message).
const maxKeptCarry = 512

// putBack queues b (copied) to be read before the socket; carry is empty.
func (s *wsSource) putBack(b []byte) {
	if cap(s.carry) < len(b) {
		s.carry = make([]byte, len(b), max(len(b), 256))
	}
	s.carry = s.carry[:len(b)]
	copy(s.carry, b)
}

func (c *wsConn) Write(p []byte) (int, error) {
	if c.out != nil {
		return c.out.writeBinary(p)
	}
	if err := c.ws.Write(context.Background(), websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// wsOut is the write side of a WebSocket connection's socket, shared by
// the engine's writes (wsConn.Write: each one binary message, framed
// here) and coder/websocket's control frames (its write buffer flushes
// into Write), so that frames go out whole and in order: each is one
// Write of the socket under mu. No binary message follows a close frame
// [RFC 6455 5.5.1].
//
// coder/websocket writes a control frame (at most 127 bytes, unmasked
// from a server) into its write buffer and flushes it whole: that buffer
// is made wsControlBufferSize bytes (hijackWriter) instead of net/http's
// 4 KiB, which an idle connection kept.
//
// A pong waits for a message being written, however long that write is
// blocked by a client that does not read, as the engine's PINGRESP waits
// over TCP (coder/websocket's own lock gave up after 5 s and ended the
// connection); Close ends such a write within a second.
type wsOut struct {
	conn net.Conn

	// mu guards the fields below and the socket's writes.
	mu        sync.Mutex
	closeSent bool  // a close frame was written
	err       error // a write failed: the stream may hold part of a frame
}

// wsControlBufferSize is coder/websocket's write buffer when it writes
// only control frames: a header of 2 bytes and at most 125 of payload.
const wsControlBufferSize = 128

// wsFramePool holds the buffers a binary message of up to
// wsMaxCopiedMessage bytes is framed in, so that header and payload go
// out in one write; an idle connection keeps none.
var wsFramePool = sync.Pool{New: func() any { b := make([]byte, 0, wsMaxCopiedMessage+wsMaxFrameHeader); return &b }}

const (
	// wsMaxCopiedMessage: a larger message is written with its header
	// from the caller's buffer (net.Buffers: one writev on TCP).
	wsMaxCopiedMessage = 4096
	wsMaxFrameHeader   = 10
)

// writeBinary writes p as one binary message.
func (o *wsOut) writeBinary(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.err != nil:
		return 0, o.err
	case o.closeSent:
		return 0, net.ErrClosed
	}
	var err error
	if len(p) <= wsMaxCopiedMessage {
		bp := wsFramePool.Get().(*[]byte)
		b := append(wsframe.AppendHeader((*bp)[:0], wsframe.OpBinary, len(p)), p...)
		_, err = o.conn.Write(b)
		*bp = b[:0]
		wsFramePool.Put(bp)
	} else {
		var head [wsMaxFrameHeader]byte
		bufs := net.Buffers{wsframe.AppendHeader(head[:0], wsframe.OpBinary, len(p)), p}
		_, err = writeBuffers(o.conn, &bufs)
	}
	if err != nil {
		o.err = err
		return 0, err
	}
	return len(p), nil
}

// Write is what coder/websocket's write buffer flushes: one whole
// control frame.
func (o *wsOut) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.conn.Write(p)
	if err != nil {
		o.err = err
	}
	if len(p) > 0 && p[0]&0x0f == 0x8 {
		o.closeSent = true
	}
	return n, err
}

// Close sends a close frame (within a second) and closes the connection,
// without waiting for the peer's close frame: a read in progress is ended
// first (NetConn does the same by cancelling its read context), so that
// Close does not wait for it, nor up to coder/websocket's 5 s for a peer
// that does not answer.
//
// While a Read is in progress (the engine waits for input, as it does for
// an idle client) it closes without the closing handshake, which would
// read from the buffer the Read is using.
func (c *wsConn) Close() error {
	_ = c.raw.SetReadDeadline(time.Now())
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	if !c.rmu.TryLock() {
		return c.ws.CloseNow()
	}
	defer c.rmu.Unlock()
	if len(c.pend) > 0 && c.src != nil {
		// The closing handshake reads through coder/websocket.
		c.src.putBack(append(c.pend, c.src.carry...))
		c.pend = nil
	}
	return c.ws.Close(websocket.StatusNormalClosure, "")
}

func (c *wsConn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.remote }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// hijackWriter keeps the connection websocket.Accept hijacks, and gives
// it a read buffer of wsReadBufferSize instead of net/http's 4 KiB, and,
// without compression, a write buffer of wsControlBufferSize instead of
// net/http's 4 KiB: buffers an idle connection would keep for its whole
// life (TestMeasureIdleMemory).
type hijackWriter struct {
	http.ResponseWriter
	conn    net.Conn
	br      *bufio.Reader // the read buffer handed to coder/websocket
	src     *wsSource     // what br reads
	out     *wsOut        // the socket's write side; nil with compression
	deflate bool          // permessage-deflate was negotiated
}

func (w *hijackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = conn
	// Bytes the client sent after its request are in net/http's buffer:
	// they are read first, through the smaller one.
	w.src = &wsSource{conn: conn}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		w.src.carry = bytes.Clone(b)
	}
	brw.Reader = bufio.NewReaderSize(w.src, wsReadBufferSize)
	w.br = brw.Reader
	// Accept has set the response's headers: with permessage-deflate,
	// coder/websocket writes (and compresses) every message itself.
	w.deflate = w.Header().Get("Sec-WebSocket-Extensions") != ""
	if !w.deflate {
		// A server's coder/websocket writes through brw.Writer.
		w.out = &wsOut{conn: conn}
		brw.Writer = bufio.NewWriterSize(w.out, wsControlBufferSize)
	}
	// coder/websocket resets the reader onto the connection it is given:
	// give it one that reads through src.
	return &srcConn{Conn: conn, src: w.src}, brw, nil
}
