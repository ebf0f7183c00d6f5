package listeners

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// recorder is an engine stand-in: it reads each connection to its end and
// hands over what it read.
type recorder struct {
	streams chan []byte
}

func newRecorder() *recorder { return &recorder{streams: make(chan []byte, 1)} }

func (r *recorder) establish(id string, c net.Conn) error {
	b, err := io.ReadAll(c)
	r.streams <- b
	return err
}

// wsServer serves l on a loopback HTTP server until the test ends.
func wsServer(tb testing.TB, l *WebSocket, establish func(string, net.Conn) error) string {
	tb.Helper()
	go l.Serve(establish)
	srv := httptest.NewServer(l)
	tb.Cleanup(func() {
		l.Stop()
		l.CloseConns()
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/mqtt"
}

// writeFrames sends data as binary messages whose sizes come from splits:
// each split byte s cuts off a message of s%64 bytes (0: an empty
// message, then one of a byte) and, when s >= 128, sends it as several frames (the message's
// Writer writes a frame per Write call).
func writeFrames(ctx context.Context, c *websocket.Conn, data, splits []byte) error {
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		var s byte = 200
		if len(splits) > 0 {
			s = splits[i%len(splits)]
			n = min(int(s%64), len(data))
		}
		if n == 0 {
			// An empty message, then at least a byte, so the loop ends.
			if err := c.Write(ctx, websocket.MessageBinary, nil); err != nil {
				return err
			}
			n = 1
		}
		msg := data[:n]
		data = data[n:]
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		if s >= 128 && len(msg) > 1 {
			half := len(msg) / 2
			if _, err := w.Write(msg[:half]); err != nil {
				return err
			}
			msg = msg[half:]
		}
		if _, err := w.Write(msg); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return nil
}

// FuzzWebSocketStream: any bytes, cut into any binary messages and
// frames, reach the engine side as the same byte stream; with a packet
// size limit, as a prefix of it. Nothing panics.
func FuzzWebSocketStream(f *testing.F) {
	f.Add([]byte{0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, 'a'}, []byte{3, 200, 1})
	f.Add(append(append([]byte{}, connect5...), publish(300)...), []byte{0, 63, 130})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff}, []byte{1})

	plain, limited := newRecorder(), newRecorder()
	urlPlain := wsServer(f, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), plain.establish)
	urlLimited := wsServer(f, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1, MaxPacketSize: 64}), limited.establish)

	f.Fuzz(func(t *testing.T, data, splits []byte) {
		for _, tt := range []struct {
			url    string
			rec    *recorder
			prefix bool
		}{{urlPlain, plain, false}, {urlLimited, limited, true}} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, _, err := websocket.Dial(ctx, tt.url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
			if err != nil {
				cancel()
				t.Fatalf("dial: %v", err)
			}
			werr := writeFrames(ctx, c, data, splits)
			c.Close(websocket.StatusNormalClosure, "")
			cancel()
			var got []byte
			select {
			case got = <-tt.rec.streams:
			case <-time.After(10 * time.Second):
				t.Fatal("the engine side never saw the connection end")
			}
			switch {
			case tt.prefix:
				if !bytes.HasPrefix(data, got) {
					t.Fatalf("limited stream %x is not a prefix of %x", got, data)
				}
			case werr == nil && !bytes.Equal(got, data):
				t.Fatalf("stream changed:\n got %x\nwant %x", got, data)
			}
		}
	})
}

// TestWebSocketStreamSplits runs the fuzz property over chosen splits: one
// packet over many frames, many packets in one frame.
func TestWebSocketStreamSplits(t *testing.T) {
	stream := append(append(append([]byte{}, connect311...), publish(100)...), publish(40)...)
	rec := newRecorder()
	url := wsServer(t, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), rec.establish)
	for _, tt := range []struct {
		name   string
		splits []byte
	}{
		{"one message", nil},
		{"a byte per message", []byte{1}},
		{"a packet over frames", []byte{130, 135, 190}},
		{"with empty messages", []byte{0, 5, 0, 17}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
			if err != nil {
				t.Fatal(err)
			}
			if err := writeFrames(ctx, c, stream, tt.splits); err != nil {
				t.Fatal(err)
			}
			c.Close(websocket.StatusNormalClosure, "")
			if got := <-rec.streams; !bytes.Equal(got, stream) {
				t.Fatalf("got %x\nwant %x", got, stream)
			}
		})
	}
}
