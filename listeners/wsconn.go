package listeners

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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
type wsConn struct {
	ws     *websocket.Conn
	raw    net.Conn // the hijacked connection: deadlines and the local address
	remote net.Addr // the client's address (WebSocket.remoteAddr)

	// Only the engine's reading goroutine touches these.
	r   io.Reader // the current message; nil between messages
	eof bool      // the peer closed normally
}

func (c *wsConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.eof {
			return 0, io.EOF
		}
		if c.r == nil {
			typ, r, err := c.ws.Reader(context.Background())
			if err != nil {
				switch websocket.CloseStatus(err) {
				case websocket.StatusNormalClosure, websocket.StatusGoingAway:
					c.eof = true
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.MessageBinary {
				// [MQTT-6.0.0-1] MQTT is sent in binary messages.
				err := fmt.Errorf("unexpected frame type read (expected %v): %v", websocket.MessageBinary, typ)
				c.ws.Close(websocket.StatusUnsupportedData, err.Error())
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r, err = nil, nil
		}
		if n > 0 || err != nil {
			return n, err
		}
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
func (c *wsConn) Close() error {
	_ = c.raw.SetReadDeadline(time.Now())
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
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
	return conn, brw, nil
}
