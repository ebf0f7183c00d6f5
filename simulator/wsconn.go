package simulator

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-iot/tether/internal/wsframe"
)

// wsConn is the MQTT byte stream of a WebSocket connection to a broker,
// as paho reads and writes it: each Write one binary message, masked
// (RFC 6455 5.3); Read the payloads of the binary messages that come, as
// one stream [MQTT-6.0.0-2]. It frames both ways itself on the socket
// (TCP, or TLS for wss), with the socket's own deadlines: coder/websocket's
// NetConn, which it replaces, registered a context callback for every
// message read and written and reset a timer for every deadline paho set,
// and its reader was set up anew per message. That cost the bench 1.2×
// its CPU over TCP, on the machine whose broker it measures
// (BenchmarkWSClient).
//
// Reads go through a buffer: paho reads a packet in three or more reads
// (its first byte, its length byte by byte, its body), which the buffer
// serves without a system call. Pings are answered with pongs, pongs
// ignored; a close frame is answered with one and ends the stream (EOF).
// A frame the protocol forbids (masked from the server, reserved bits or
// opcodes, a text message [MQTT-6.0.0-1], a control frame fragmented or
// over 125 bytes, a continuation with no message open) fails the read
// and closes the connection.
//
// Close sends a close frame (1000) when no write holds the socket, then
// closes the socket: a Read or Write in progress, or any later, fails
// with an error that wraps net.ErrClosed, as a TCP connection's does, so
// that paho reports the connection lost (churn).
type wsConn struct {
	conn net.Conn // the socket

	// The read side: only the goroutine in Read uses these.
	rbuf       []byte // input read ahead: rbuf[rpos:rend]
	rpos, rend int
	left       uint64 // payload bytes of the current data frame still to read
	inMsg      bool   // a data message's final frame is still to come
	rerr       error  // what ended the stream; returned from then on

	// wmu guards the write side: the socket's writes (messages, pongs,
	// the close frame, each one write) and the fields below.
	wmu       sync.Mutex
	wbuf      []byte
	keys      *rand.ChaCha8 // masking keys
	closeSent bool
	werr      error // a write failed: the stream may hold part of a frame

	closed atomic.Bool
}

const (
	// wsClientReadBuffer holds a burst of small messages (a subscriber's
	// QoS 0 stream) for one read of the socket.
	wsClientReadBuffer = 16 << 10
	// wsKeptWriteBuffer bounds the write buffer kept between messages.
	wsKeptWriteBuffer = 64 << 10
)

var (
	// errWSProtocol: the broker sent what RFC 6455 or MQTT over WebSocket
	// forbids.
	errWSProtocol = errors.New("websocket: protocol error")
	// errWSClosed is what reads and writes return once Close was called.
	errWSClosed = fmt.Errorf("websocket: %w", net.ErrClosed)
)

// newWSConn returns the connection over conn, on which the upgrade is
// done; buffered is what was read past the upgrade's response.
func newWSConn(conn net.Conn, buffered []byte) *wsConn {
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails (crypto/rand.Read)
	c := &wsConn{conn: conn, rbuf: make([]byte, max(wsClientReadBuffer, len(buffered))), keys: rand.NewChaCha8(seed)}
	c.rend = copy(c.rbuf, buffered)
	return c
}

func (c *wsConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if c.left > 0 {
			if c.rpos < c.rend {
				k := copy(p[n:], c.rbuf[c.rpos:c.rpos+int(min(uint64(c.rend-c.rpos), c.left))])
				c.rpos += k
				c.left -= uint64(k)
				n += k
				continue
			}
			if n > 0 {
				break // hand over what is here rather than wait
			}
			if len(p) >= len(c.rbuf) {
				// A large read of a large frame: straight from the socket.
				k, err := c.conn.Read(p[:min(uint64(len(p)), c.left)])
				c.left -= uint64(k)
				if err != nil && k == 0 {
					return 0, c.readFailed(err)
				}
				return k, nil
			}
			if err := c.fill(); err != nil {
				return 0, err
			}
			continue
		}
		if c.rerr != nil {
			break
		}
		h, head, ok := wsframe.Parse(c.rbuf[c.rpos:c.rend])
		if ok && h.IsControl() && h.Len <= wsframe.MaxControlPayload && uint64(c.rend-c.rpos-head) < h.Len {
			ok = false // a control frame is handled whole
		}
		if !ok {
			if n > 0 {
				break
			}
			if err := c.fill(); err != nil {
				return 0, err
			}
			continue
		}
		if err := c.frame(h, head); err != nil {
			if c.closed.Load() {
				// Closed here: the broker's answer to the close frame
				// (or anything else) does not hide that.
				err = errWSClosed
			}
			c.rerr = err
			break
		}
	}
	if n > 0 || len(p) == 0 {
		return n, nil
	}
	return 0, c.rerr
}

// frame takes the header h (head bytes) at the start of the buffer and,
// for a control frame, its payload, which is whole in the buffer.
func (c *wsConn) frame(h wsframe.Header, head int) error {
	switch {
	case h.Masked:
		return c.fail(fmt.Errorf("%w: a masked frame from the server", errWSProtocol))
	case h.RSV != 0:
		return c.fail(fmt.Errorf("%w: reserved bits %#x set (no extension was agreed)", errWSProtocol, h.RSV))
	case h.IsControl() && (!h.Fin || h.Len > wsframe.MaxControlPayload):
		return c.fail(fmt.Errorf("%w: a control frame fragmented or over %d bytes", errWSProtocol, wsframe.MaxControlPayload))
	case h.Len > 1<<63-1:
		return c.fail(fmt.Errorf("%w: a frame length with its top bit set", errWSProtocol))
	}
	c.rpos += head
	if h.IsControl() {
		payload := c.rbuf[c.rpos : c.rpos+int(h.Len)]
		c.rpos += int(h.Len)
		switch h.Op {
		case wsframe.OpPing:
			// A pong that cannot be written is not the reader's error:
			// the next write meets it.
			_ = c.writeControl(wsframe.OpPong, payload)
			return nil
		case wsframe.OpPong:
			return nil
		case wsframe.OpClose:
			// Answer with the status received (RFC 6455 5.5.1), then
			// the stream ends.
			code := payload[:min(len(payload), 2)]
			_ = c.writeControl(wsframe.OpClose, code)
			return io.EOF
		}
		return c.fail(fmt.Errorf("%w: reserved control opcode %#x", errWSProtocol, h.Op))
	}
	switch h.Op {
	case wsframe.OpBinary:
		if c.inMsg {
			return c.fail(fmt.Errorf("%w: a message began inside another", errWSProtocol))
		}
	case wsframe.OpContinuation:
		if !c.inMsg {
			return c.fail(fmt.Errorf("%w: a continuation frame with no message open", errWSProtocol))
		}
	case wsframe.OpText:
		// [MQTT-6.0.0-1] MQTT is sent in binary messages.
		return c.fail(fmt.Errorf("%w: a text message (MQTT is sent in binary messages)", errWSProtocol))
	default:
		return c.fail(fmt.Errorf("%w: reserved opcode %#x", errWSProtocol, h.Op))
	}
	c.inMsg = !h.Fin
	c.left = h.Len
	return nil
}

// fail sends a close frame (1002, protocol error) and closes the socket;
// it returns err.
func (c *wsConn) fail(err error) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.writeControl(wsframe.OpClose, []byte{0x03, 0xea})
	_ = c.conn.Close()
	return err
}

// fill reads the socket into the buffer, after what is there.
func (c *wsConn) fill() error {
	if c.rerr != nil {
		return c.rerr
	}
	if c.rpos > 0 {
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
	}
	k, err := c.conn.Read(c.rbuf[c.rend:])
	c.rend += k
	if err != nil && k == 0 {
		return c.readFailed(err)
	}
	return nil
}

// readFailed turns a read error into the stream's: an end of the socket
// mid-frame is unexpected; after Close, the error wraps net.ErrClosed. A
// deadline is not the end: the read may be tried again.
func (c *wsConn) readFailed(err error) error {
	switch {
	case c.closed.Load():
		err = errWSClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		return err
	case err == io.EOF && (c.left > 0 || c.inMsg || c.rend > c.rpos):
		err = io.ErrUnexpectedEOF
	}
	c.rerr = err
	return err
}

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return 0, errWSClosed
	}
	if err := c.writeFrame(wsframe.OpBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) writeControl(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return errWSClosed
	}
	return c.writeFrame(op, payload)
}

// writeFrame writes one final frame, header and masked payload in one
// write. Called with wmu held.
func (c *wsConn) writeFrame(op byte, p []byte) error {
	switch {
	case c.werr != nil:
		return c.werr
	case c.closeSent:
		return errWSClosed // nothing follows a close frame [RFC 6455 5.5.1]
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], uint32(c.keys.Uint64()))
	b := wsframe.AppendMaskedHeader(c.wbuf[:0], op, len(p), key)
	h := len(b)
	b = append(b, p...)
	wsframe.Mask(b[h:], b[h:], key)
	_, err := c.conn.Write(b)
	if cap(b) <= wsKeptWriteBuffer {
		c.wbuf = b[:0]
	}
	if op == wsframe.OpClose {
		c.closeSent = true
	}
	if err != nil {
		if c.closed.Load() {
			err = errWSClosed
		}
		c.werr = err
	}
	return err
}

// Close sends a close frame (normal closure) if no write holds the
// socket, and closes it without waiting for the broker's answer.
func (c *wsConn) Close() error {
	if c.closed.Swap(true) {
		return errWSClosed
	}
	if c.wmu.TryLock() {
		if c.werr == nil && !c.closeSent {
			_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = c.writeFrame(wsframe.OpClose, []byte{0x03, 0xe8})
		}
		c.wmu.Unlock()
	}
	return c.conn.Close()
}

func (c *wsConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// maxUpgradeResponse bounds the upgrade's response, headers and the
// refusal's reason, in bytes.
const maxUpgradeResponse = 64 << 10

// wsAcceptGUID is RFC 6455's key suffix (4.2.2).
const wsAcceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsUpgrade does the WebSocket opening handshake (RFC 6455 4.1) on conn
// for path on host, asking for subprotocol mqtt [MQTT-6.0.0-3] and no
// extension, within ctx. On an error conn is left to the caller.
func wsUpgrade(ctx context.Context, conn net.Conn, host, path string) (*wsConn, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	var nonce [16]byte
	_, _ = crand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	uri := (&url.URL{Path: path}).RequestURI()
	req := "GET " + uri + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n" +
		"User-Agent: tether-simulator\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, wsHandshakeErr(ctx, err)
	}
	// The response is read through a bound (a broker's headers without
	// end are refused); what was read past it is the stream's start.
	br := bufio.NewReaderSize(&io.LimitedReader{R: conn, N: maxUpgradeResponse}, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, wsHandshakeErr(ctx, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The broker's reason, if it says one (Tether does, in plain
		// text).
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		reason := strings.TrimSpace(string(body))
		if reason == "" {
			reason = resp.Status
		}
		return nil, fmt.Errorf("websocket handshake: status %d: %s", resp.StatusCode, reason)
	}
	sum := sha1.Sum([]byte(key + wsAcceptGUID))
	switch {
	case !headerToken(resp.Header, "Upgrade", "websocket") || !headerToken(resp.Header, "Connection", "upgrade"):
		return nil, errors.New("websocket handshake: the response does not upgrade to websocket")
	case resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]):
		return nil, errors.New("websocket handshake: wrong Sec-WebSocket-Accept")
	case resp.Header.Get("Sec-WebSocket-Protocol") != "mqtt":
		return nil, errors.New("websocket handshake: broker did not accept subprotocol mqtt")
	case resp.Header.Get("Sec-WebSocket-Extensions") != "":
		return nil, errors.New("websocket handshake: the broker chose an extension that was not offered")
	}
	if !stop() {
		return nil, wsHandshakeErr(ctx, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	buffered, _ := br.Peek(br.Buffered())
	return newWSConn(conn, buffered), nil
}

func wsHandshakeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return fmt.Errorf("websocket handshake: %w", err)
}

// headerToken reports whether the comma-separated header name holds
// token, in any case.
func headerToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
