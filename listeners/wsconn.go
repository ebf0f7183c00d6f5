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
type wsConn struct {
	ws     *websocket.Conn
	raw    net.Conn      // the hijacked connection: deadlines and the local address
	remote net.Addr      // the client's address (WebSocket.remoteAddr)
	br     *bufio.Reader // coder/websocket's read buffer, to look ahead; nil: do not (compression)

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
				unmask(p[n:n+size], b[head:], b[head-4:head])
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
	// FIN, no RSV bits, binary; masked, as a client's frames must be (an
	// unmasked one is left to coder/websocket, which refuses it).
	if b[0] != 0x82 || b[1]&0x80 == 0 {
		return 0, 0, false
	}
	head, n := 2, uint64(b[1]&0x7f)
	switch n {
	case 126:
		head = 4
	case 127:
		head = 10
	}
	head += 4 // mask key
	if len(b) < head {
		return 0, 0, false
	}
	switch n {
	case 126:
		n = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		n = binary.BigEndian.Uint64(b[2:10])
	}
	if uint64(k-head) < n {
		return 0, 0, false
	}
	return head, int(n), true
}

// unmask copies src to dst (len(dst) == len(src)) undoing the client's
// masking with key (4 bytes, RFC 6455 5.3), 8 bytes at a time.
func unmask(dst, src, key []byte) {
	k4 := binary.LittleEndian.Uint32(key)
	k8 := uint64(k4) | uint64(k4)<<32
	i := 0
	for ; i+8 <= len(src); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k8)
	}
	for ; i < len(src); i++ {
		dst[i] = src[i] ^ key[i&3]
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.Write(context.Background(), websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
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
	return c.ws.Close(websocket.StatusNormalClosure, "")
}

func (c *wsConn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.remote }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// hijackWriter keeps the connection websocket.Accept hijacks, and gives
// it a read buffer of wsReadBufferSize instead of net/http's 4 KiB, which
// an idle connection would keep for its whole life (TestMeasureIdleMemory).
type hijackWriter struct {
	http.ResponseWriter
	conn net.Conn
	br   *bufio.Reader // the read buffer handed to coder/websocket
}

func (w *hijackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = conn
	// Bytes the client sent after its request are in net/http's buffer:
	// move them to the smaller one, or keep net/http's if they do not fit.
	switch n := brw.Reader.Buffered(); {
	case n == 0:
		brw.Reader = bufio.NewReaderSize(conn, wsReadBufferSize)
	case n <= wsReadBufferSize:
		b, _ := brw.Reader.Peek(n)
		r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), wsReadBufferSize)
		if _, err := r.Peek(n); err == nil {
			brw.Reader = r
		}
	}
	w.br = brw.Reader
	return conn, brw, nil
}
