package listeners

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
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

// TestWebSocketBurstPastReadBuffer: a burst of messages larger than the
// connection's read buffer (wsReadBufferSize), sent at once after the
// upgrade, comes out of one Read as large as the engine's, as over TCP
// (one read and one acknowledgement write per burst, not one per
// kilobyte).
func TestWebSocketBurstPastReadBuffer(t *testing.T) {
	reads := make(chan []byte, 1)
	// The burst is sent once the engine has the connection: bytes that
	// come sooner can be read by net/http before it hands the socket
	// over, and they are then read through the buffer (one read of 880
	// bytes, then the rest: in order, and what this test is not about).
	ready := make(chan struct{})
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		close(ready)
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		reads <- bytes.Clone(buf[:n])
		return err
	})
	c, _ := rawUpgrade(t, url, nil)
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the engine did not get the connection")
	}
	var burst, want []byte
	for i := range 20 {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 80)
		burst = append(burst, maskedFrame(msg)...)
		want = append(want, msg...)
	}
	if len(burst) <= wsReadBufferSize {
		t.Fatalf("a burst of %d bytes does not pass the read buffer", len(burst))
	}
	if _, err := c.Write(burst); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-reads:
		if !bytes.Equal(got, want) {
			t.Fatalf("one read gave %d bytes of %d: %q", len(got), len(want), got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no read returned")
	}
}

// TestWebSocketControlFrameInBurst: a ping in the middle of a burst, and
// a message cut short at its end, are handled in order: the client gets
// its pong, and the engine every message, in order.
func TestWebSocketControlFrameInBurst(t *testing.T) {
	rec := newRecorder()
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
	c, br := rawUpgrade(t, url, nil)
	var burst, want []byte
	for i := range 12 {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 30+i)
		burst = append(burst, maskedFrame(msg)...)
		want = append(want, msg...)
		if i == 5 {
			ping := maskedFrame([]byte("hi"))
			ping[0] = 0x89
			burst = append(burst, ping...)
		}
	}
	last := maskedFrame([]byte("the last message, cut in two"))
	want = append(want, "the last message, cut in two"...)
	if _, err := c.Write(append(burst, last[:9]...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	pong := make([]byte, 4)
	if _, err := io.ReadFull(br, pong); err != nil {
		t.Fatalf("no pong: %v", err)
	}
	if !bytes.Equal(pong, []byte{0x8a, 2, 'h', 'i'}) {
		t.Fatalf("got %x, want a pong with the ping's payload", pong)
	}
	if _, err := c.Write(last[9:]); err != nil {
		t.Fatal(err)
	}
	closeAndCheck(t, c, rec, want)
}

// closeAndCheck sends a close frame (1000) on c and checks that the
// engine side read want before the connection ended.
func closeAndCheck(t *testing.T, c net.Conn, rec *recorder, want []byte) {
	t.Helper()
	closeFrame := maskedFrame([]byte{0x03, 0xe8})
	closeFrame[0] = 0x88
	if _, err := c.Write(closeFrame); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-rec.streams:
		if !bytes.Equal(got, want) {
			t.Fatalf("the engine read %d bytes, want %d:\n got %x\nwant %x", len(got), len(want), got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the engine side never saw the connection end")
	}
}

// rawStream is data as a client's masked binary frames, a message of
// sizes[i%len(sizes)]*7 bytes each (0: an empty one), with a ping after
// every fifth message when ping is set.
func rawStream(data, sizes []byte, ping bool) []byte {
	var out []byte
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		if len(sizes) > 0 {
			n = min(int(sizes[i%len(sizes)])*7, len(data))
		}
		out = append(out, maskedFrame(data[:n])...)
		data = data[n:]
		if n == 0 {
			out = append(out, maskedFrame(data[:1])...)
			data = data[1:]
		}
		if ping && i%5 == 4 {
			f := maskedFrame([]byte("p"))
			f[0] = 0x89
			out = append(out, f...)
		}
	}
	return out
}

// checkCutStream writes stream to a new connection in pieces whose sizes
// come from cuts (each piece its own write, the next after a pause, so
// that the server's reads end anywhere in a frame), then a close frame,
// and checks that the engine side read want.
func checkCutStream(t *testing.T, url string, rec *recorder, stream, cuts, want []byte) {
	t.Helper()
	c, br := rawUpgrade(t, url, nil)
	go func() { _, _ = io.Copy(io.Discard, br) }() // pongs, the close frame
	for i := 0; len(stream) > 0; i++ {
		n := len(stream)
		if len(cuts) > 0 {
			n = min(max(int(cuts[i%len(cuts)])*3, 1), len(stream))
		}
		if _, err := c.Write(stream[:n]); err != nil {
			t.Fatal(err)
		}
		stream = stream[n:]
		if i%4 == 0 {
			time.Sleep(200 * time.Microsecond)
		}
	}
	closeAndCheck(t, c, rec, want)
}

// TestWebSocketStreamCutAnywhere: a client's frames (of 0 to 3,000
// bytes, pings among them) cut into TCP segments at any byte reach the
// engine as the same stream, whether the cut falls in a header, a mask
// key or a payload, and whether a frame fits the engine's read or not.
func TestWebSocketStreamCutAnywhere(t *testing.T) {
	rec := newRecorder()
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
	data := make([]byte, 5000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sizes := []byte{1, 0, 13, 2, 40, 100, 3, 17, 250, 5, 9}
	for _, cuts := range [][]byte{nil, {0}, {1}, {2, 5, 1}, {33}, {111, 3}, {255}} {
		for _, ping := range []bool{false, true} {
			checkCutStream(t, url, rec, rawStream(data, sizes, ping), cuts, data)
		}
	}
}

// FuzzWebSocketRawStream: any bytes in any binary frames, with or without
// pings, cut into segments anywhere, reach the engine side unchanged.
func FuzzWebSocketRawStream(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef"), []byte{1, 2}, []byte{1}, true)
	f.Add(bytes.Repeat([]byte{0xab}, 3000), []byte{255, 40}, []byte{100, 7}, false)
	f.Add([]byte{0x10, 0x00}, []byte{}, []byte{0}, false)
	rec := newRecorder()
	url := wsServer(f, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
	f.Fuzz(func(t *testing.T, data, sizes, cuts []byte, ping bool) {
		if len(data) == 0 || len(data) > 4096 {
			return
		}
		checkCutStream(t, url, rec, rawStream(data, sizes, ping), cuts, data)
	})
}
