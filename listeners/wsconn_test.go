package listeners

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rawUpgrade opens a TCP connection to url's host and sends the upgrade
// request followed at once, in the same write, by extra.
func rawUpgrade(t testing.TB, url string, extra []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	host := strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/mqtt")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := "GET /mqtt HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
	if _, err := c.Write(append([]byte(req), extra...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	return c, br
}

// maskedFrame is a client's binary frame (masked, as RFC 6455 requires).
func maskedFrame(payload []byte) []byte {
	key := []byte{1, 2, 3, 4}
	f := []byte{0x82}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, key...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	return f
}

// TestWebSocketBytesWithUpgrade: frames a client sends in the same
// segment as its upgrade request (which net/http has read into its own
// buffer) reach the engine, in order, whether they fit the connection's
// smaller read buffer or not.
func TestWebSocketBytesWithUpgrade(t *testing.T) {
	for _, size := range []int{10, 900, 3000} { // 900: with framing, still within wsReadBufferSize
		rec := newRecorder()
		url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
		data := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		var frames []byte
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 100)
			frames = append(frames, maskedFrame(rest[:n])...)
			rest = rest[n:]
		}
		c, _ := rawUpgrade(t, url, frames)
		c.Close()
		select {
		case got := <-rec.streams:
			if !bytes.Equal(got, data) {
				t.Fatalf("%d bytes sent with the upgrade: the engine read %d: %q", size, len(got), got)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d bytes: the engine side never saw the connection end", size)
		}
	}
}

// TestWebSocketReadDeadline: a read deadline the engine sets (its
// keep-alive) ends a read on a silent WebSocket connection with a timeout,
// and the connection then closes.
func TestWebSocketReadDeadline(t *testing.T) {
	errs := make(chan error, 1)
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 16))
		errs <- err
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	select {
	case err := <-errs:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read on a silent connection: %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read deadline did not end the read")
	}
	if _, _, err := ws.Read(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("client read after the server's timeout: %v (context %v), want the connection closed", err, ctx.Err())
	}
}

// TestWebSocketTextMessage: a text message ends the MQTT stream with an
// error and closes the connection with 1003 [MQTT-6.0.0-1].
func TestWebSocketTextMessage(t *testing.T) {
	rec := newRecorder()
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageBinary, []byte{0x10}); err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, _, err = ws.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusUnsupportedData {
		t.Fatalf("after a text message: %v (status %v), want close 1003", err, got)
	}
	select {
	case got := <-rec.streams:
		if !bytes.Equal(got, []byte{0x10}) {
			t.Fatalf("the engine read %x, want the binary message only", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the engine side never saw the connection end")
	}
}

// TestWebSocketBurstInOneRead: binary messages that are already whole in
// the read buffer come out of one Read (the engine then handles the burst
// and acknowledges it in one write, as over TCP); a message that is not
// all there yet is not waited for.
func TestWebSocketBurstInOneRead(t *testing.T) {
	reads := make(chan []byte, 2)
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		buf := make([]byte, 4096)
		for range 2 {
			n, err := c.Read(buf)
			if err != nil {
				return err
			}
			reads <- bytes.Clone(buf[:n])
		}
		return nil
	})
	var burst, want []byte
	for i := range 10 {
		msg := []byte(strings.Repeat(string(rune('a'+i)), 20))
		burst = append(burst, maskedFrame(msg)...)
		want = append(want, msg...)
	}
	partial := maskedFrame([]byte("0123456789"))
	c, _ := rawUpgrade(t, url, append(burst, partial[:8]...)) // the last frame cut short
	select {
	case got := <-reads:
		if !bytes.Equal(got, want) {
			t.Fatalf("first read %q, want the 10 whole messages %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no read returned while a frame was incomplete: it waited for it")
	}
	if _, err := c.Write(partial[8:]); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-reads:
		if string(got) != "0123456789" {
			t.Fatalf("second read %q, want the completed message", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the completed message was not read")
	}
}
