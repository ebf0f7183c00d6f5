package listeners

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// writeSizes are message sizes at each edge of the frame header's length
// forms (7, 16 and 64 bits) and of the copied and written-in-place paths.
var writeSizes = []int{0, 1, 125, 126, 127, 4095, 4096, 4097, 65535, 65536, 70000}

// writerServer serves a WebSocket listener whose engine stand-in writes
// msgs, one Write each, then reads the connection to its end.
func writerServer(t *testing.T, opts *WebSocketOptions, msgs [][]byte) string {
	t.Helper()
	return wsServer(t, NewWebSocket(opts), func(_ string, c net.Conn) error {
		for _, m := range msgs {
			if _, err := c.Write(m); err != nil {
				return err
			}
		}
		_, err := io.Copy(io.Discard, c)
		return err
	})
}

func sizedMessages() [][]byte {
	var msgs [][]byte
	for i, n := range writeSizes {
		m := make([]byte, n)
		for j := range m {
			m[j] = byte(i + j*7)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// TestWebSocketWriteMessages: each engine Write reaches a WebSocket
// client as one binary message with the bytes written, at every length
// form of the frame header, with and without compression (which
// coder/websocket writes itself).
func TestWebSocketWriteMessages(t *testing.T) {
	for name, mode := range map[string]websocket.CompressionMode{"plain": websocket.CompressionDisabled, "deflate": websocket.CompressionContextTakeover} {
		t.Run(name, func(t *testing.T) {
			msgs := sizedMessages()
			url := writerServer(t, &WebSocketOptions{ConnectTimeout: -1, Compression: mode}, msgs)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}, CompressionMode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer ws.CloseNow()
			ws.SetReadLimit(-1)
			for i, want := range msgs {
				typ, got, err := ws.Read(ctx)
				if err != nil {
					t.Fatalf("message %d (%d bytes): %v", i, len(want), err)
				}
				if typ != websocket.MessageBinary || !bytes.Equal(got, want) {
					t.Fatalf("message %d: %v of %d bytes, want binary of %d", i, typ, len(got), len(want))
				}
			}
			_ = ws.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// TestWebSocketWriteFrameHeaders: the frames as they are on the wire: one
// final, unmasked binary frame per Write, with the shortest length form
// (RFC 6455 5.2), header and payload in order.
func TestWebSocketWriteFrameHeaders(t *testing.T) {
	msgs := sizedMessages()
	url := writerServer(t, &WebSocketOptions{ConnectTimeout: -1}, msgs)
	c, br := rawUpgrade(t, url, nil)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, want := range msgs {
		op, payload := readServerFrame(t, br)
		if op != 0x82 || !bytes.Equal(payload, want) {
			t.Fatalf("frame %d: first byte %#x, %d bytes; want 0x82 and %d bytes", i, op, len(payload), len(want))
		}
	}
}

// readServerFrame reads one unmasked frame and checks that its length is
// in the shortest form; it returns the frame's first byte and payload.
func readServerFrame(t *testing.T, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatalf("frame header: %v", err)
	}
	if h[1]&0x80 != 0 {
		t.Fatal("a server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			t.Fatal(err)
		}
		if n = uint64(binary.BigEndian.Uint16(b[:])); n < 126 {
			t.Fatalf("length %d in 16 bits", n)
		}
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			t.Fatal(err)
		}
		if n = binary.BigEndian.Uint64(b[:]); n <= 0xffff {
			t.Fatalf("length %d in 64 bits", n)
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatalf("payload of %d bytes: %v", n, err)
	}
	return h[0], p
}

// TestWebSocketPongsAmidWrites: pongs, which coder/websocket writes from
// the reading side, and large messages the engine writes at the same time
// from another goroutine each go out whole: the client reads every
// message, in order, and every ping is answered.
func TestWebSocketPongsAmidWrites(t *testing.T) {
	const size = 64 << 10
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		stop, wrote := make(chan struct{}), make(chan uint32, 1)
		go func() {
			m := make([]byte, size)
			var i uint32
			defer func() { wrote <- i }()
			for ; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				binary.BigEndian.PutUint32(m, i)
				if _, err := c.Write(m); err != nil {
					return
				}
			}
		}()
		// Reading answers the client's pings, until its message.
		_, err := io.ReadFull(c, make([]byte, 1))
		close(stop)
		n := <-wrote
		if err == nil {
			_, err = c.Write(binary.BigEndian.AppendUint32(nil, n)) // the count
		}
		_, _ = io.Copy(io.Discard, c)
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	read := make(chan error, 1)
	go func() {
		for i := uint32(0); ; i++ {
			_, m, err := ws.Read(ctx)
			switch {
			case err != nil:
				read <- fmt.Errorf("message %d: %w", i, err)
			case len(m) == 4 && binary.BigEndian.Uint32(m) != i:
				read <- fmt.Errorf("read %d messages, the engine wrote %d", i, binary.BigEndian.Uint32(m))
			case len(m) == 4:
				read <- nil
			case len(m) != size || binary.BigEndian.Uint32(m) != i:
				read <- fmt.Errorf("message %d: %d bytes, number %d", i, len(m), binary.BigEndian.Uint32(m))
			default:
				continue
			}
			return
		}
	}()
	for i := range 50 {
		if err := ws.Ping(ctx); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	if err := ws.Write(ctx, websocket.MessageBinary, []byte{0}); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")
}

// TestWebSocketNoWriteAfterClose: once coder/websocket has sent a close
// frame (here in answer to a text message [MQTT-6.0.0-1]) and while it
// waits for the client's, an engine Write fails and nothing follows the
// close frame [RFC 6455 5.5.1].
func TestWebSocketNoWriteAfterClose(t *testing.T) {
	writeNow, written := make(chan struct{}), make(chan error, 1)
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		go func() {
			<-writeNow
			_, err := c.Write([]byte{0xd0, 0x00})
			written <- err
		}()
		_, err := io.Copy(io.Discard, c) // ends at the text message
		return err
	})
	c, br := rawUpgrade(t, url, nil)
	text := maskedFrame([]byte("hello"))
	text[0] = 0x81
	if _, err := c.Write(text); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	op, payload := readServerFrame(t, br)
	if op != 0x88 || len(payload) < 2 || binary.BigEndian.Uint16(payload) != uint16(websocket.StatusUnsupportedData) {
		t.Fatalf("frame %#x % x, want a close frame with 1003", op, payload)
	}
	// The server now waits for the client's close frame.
	close(writeNow)
	if err := <-written; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a write after the close frame: %v, want net.ErrClosed", err)
	}
	closeFrame := maskedFrame([]byte{0x03, 0xeb})
	closeFrame[0] = 0x88
	if _, err := c.Write(closeFrame); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); len(rest) > 0 {
		t.Fatalf("% x after the close frame (%v), want nothing", rest, err)
	}
}

// syscallCounter is a TCP connection that counts the writes handed to
// its socket: a Write is one write, a WriteBuffers one writev.
type syscallCounter struct {
	*net.TCPConn
	writes *atomic.Int64
}

func (c *syscallCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.TCPConn.Write(p)
}

func (c *syscallCounter) WriteBuffers(v *net.Buffers) (int64, error) {
	c.writes.Add(1)
	return v.WriteTo(c.TCPConn)
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &syscallCounter{TCPConn: c.(*net.TCPConn), writes: l.writes}, nil
}

// TestWebSocketLargeMessageOneWrite: a message over wsMaxCopiedMessage
// (header and payload from the caller's buffer) goes to the socket in one
// writev, as on a bare TCP connection, under the wrappers cmd/tether puts
// around an HTTP connection (the pending-connection limit, the write
// timeout), which hid the socket from net.Buffers: two writes.
func TestWebSocketLargeMessageOneWrite(t *testing.T) {
	var writes atomic.Int64
	msg := bytes.Repeat([]byte{0x35}, 70000)
	written := make(chan int64, 1)
	l := NewWebSocket(&WebSocketOptions{ConnectTimeout: -1})
	go l.Serve(func(_ string, c net.Conn) error {
		before := writes.Load()
		if _, err := c.Write(msg); err != nil {
			return err
		}
		written <- writes.Load() - before
		_, err := io.Copy(io.Discard, c)
		return err
	})
	srv := httptest.NewUnstartedServer(l)
	lim := NewLimiter(LimitOptions{MaxPendingPerIP: 100})
	srv.Listener = WriteTimeoutListener(lim.PendingListener(&countingListener{Listener: srv.Listener, writes: &writes}, nil), 10*time.Second)
	srv.Start()
	t.Cleanup(func() {
		l.Stop()
		l.CloseConns()
		srv.Close()
	})
	c, br := rawUpgrade(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/mqtt", nil)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if op, payload := readServerFrame(t, br); op != 0x82 || !bytes.Equal(payload, msg) {
		t.Fatalf("frame %#x of %d bytes, want 0x82 and %d", op, len(payload), len(msg))
	}
	if n := <-written; n != 1 {
		t.Fatalf("a %d-byte message took %d writes to the socket, want 1 (writev)", len(msg), n)
	}
}
