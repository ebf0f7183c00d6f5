package simulator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/wsframe"
)

// rawWSServer accepts one connection on 127.0.0.1:0, answers its upgrade
// as a WebSocket server (subprotocol mqtt) and hands the socket to serve;
// it returns the address.
func rawWSServer(t testing.TB, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + wsAcceptGUID))
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
		serve(c, br)
	}()
	return ln.Addr().String()
}

// dialRawWS opens a wsConn to addr.
func dialRawWS(t testing.TB, addr string) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := wsUpgrade(ctx, conn, addr, "/mqtt")
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// serverFrame is a server's frame: unmasked, first byte b0.
func serverFrame(b0 byte, payload []byte) []byte {
	f := wsframe.AppendHeader(nil, b0&0x0f, len(payload))
	f[0] = b0
	return append(f, payload...)
}

// readClientFrame reads one frame the client sent and unmasks it.
func readClientFrame(t testing.TB, br *bufio.Reader) (wsframe.Header, []byte) {
	t.Helper()
	b, _ := br.Peek(2)
	_, n, ok := wsframe.Parse(b)
	for !ok {
		b, _ = br.Peek(len(b) + 1)
		if _, n, ok = wsframe.Parse(b); !ok && len(b) >= wsframe.MaxHeader {
			t.Fatalf("no frame header in % x", b)
		}
	}
	b, _ = br.Peek(n)
	h, _, _ := wsframe.Parse(b)
	_, _ = br.Discard(n)
	if !h.Masked {
		t.Fatal("a client frame is not masked")
	}
	p := make([]byte, h.Len)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	wsframe.Mask(p, p, h.Key)
	return h, p
}

// The client's stream is the payloads of the binary messages, however
// they are cut: fragmented messages (continuation frames), empty frames,
// every length form, pings between fragments (answered with a pong of
// the same payload), pongs (ignored); a close frame is answered with a
// close frame of the same status and ends it (EOF).
func TestWSClientReadsMessages(t *testing.T) {
	var stream, want []byte
	add := func(b0 byte, p []byte) {
		stream = append(stream, serverFrame(b0, p)...)
		if b0&0x0f == wsframe.OpBinary || b0&0x0f == wsframe.OpContinuation {
			want = append(want, p...)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80,000 bytes: the 64-bit form
	add(0x82, []byte("one"))
	add(0x02, []byte("frag")) // a message in three fragments
	add(0x89, []byte("ping!"))
	add(0x00, nil)
	add(0x80, []byte("mented"))
	add(0x8a, []byte("pong"))
	add(0x82, nil)
	add(0x82, big[:300]) // the 16-bit form
	add(0x82, big)
	add(0x88, []byte{0x03, 0xe9}) // going away
	pongs, closes := make(chan []byte, 1), make(chan []byte, 1)
	addr := rawWSServer(t, func(c net.Conn, br *bufio.Reader) {
		go func() { _, _ = c.Write(stream) }()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if h, p := readClientFrame(t, br); h.Op == wsframe.OpPong {
			pongs <- p
		}
		if h, p := readClientFrame(t, br); h.Op == wsframe.OpClose {
			closes <- p
		}
	})
	ws := dialRawWS(t, addr)
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(ws)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(want))
	}
	if p := <-pongs; string(p) != "ping!" {
		t.Fatalf("pong %q, want ping!", p)
	}
	if p := <-closes; !bytes.Equal(p, []byte{0x03, 0xe9}) {
		t.Fatalf("close frame % x, want 03 e9", p)
	}
}

// Each Write is one final, masked binary frame with the bytes written,
// and a new masking key each time.
func TestWSClientWritesMessages(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 65535, 65536, 70000}
	type frame struct {
		h wsframe.Header
		p []byte
	}
	frames := make(chan frame, len(sizes))
	addr := rawWSServer(t, func(c net.Conn, br *bufio.Reader) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for range sizes {
			h, p := readClientFrame(t, br)
			frames <- frame{h, p}
		}
	})
	ws := dialRawWS(t, addr)
	keys := map[[4]byte]bool{}
	for i, n := range sizes {
		m := bytes.Repeat([]byte{byte(i + 1)}, n)
		if k, err := ws.Write(m); err != nil || k != n {
			t.Fatalf("write of %d bytes: %d, %v", n, k, err)
		}
		f := <-frames
		if !f.h.Fin || f.h.Op != wsframe.OpBinary || !bytes.Equal(f.p, m) {
			t.Fatalf("frame %d: %+v, %d bytes; want a final binary frame of %d", i, f.h, len(f.p), n)
		}
		keys[f.h.Key] = true
	}
	if len(keys) < len(sizes)-1 {
		t.Fatalf("%d masking keys for %d frames", len(keys), len(sizes))
	}
}

// A frame the protocol forbids fails the read with errWSProtocol, after
// the payload bytes before it, and the client closes with 1002.
func TestWSClientRefusesBadFrames(t *testing.T) {
	for name, bad := range map[string][]byte{
		"text":               serverFrame(0x81, []byte("hi")),
		"masked":             append([]byte{0x82, 0x81, 1, 2, 3, 4}, 'x'),
		"rsv":                serverFrame(0xc2, []byte("x")),
		"reserved opcode":    serverFrame(0x83, []byte("x")),
		"fragmented ping":    serverFrame(0x09, nil),
		"long ping":          serverFrame(0x89, make([]byte, 126)),
		"stray continuation": serverFrame(0x80, []byte("x")),
		"top bit length":     {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1},
	} {
		t.Run(name, func(t *testing.T) {
			closes := make(chan []byte, 1)
			addr := rawWSServer(t, func(c net.Conn, br *bufio.Reader) {
				_, _ = c.Write(append(serverFrame(0x82, []byte("ok")), bad...))
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, p := readClientFrame(t, br)
				closes <- p
			})
			ws := dialRawWS(t, addr)
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(ws)
			if string(got) != "ok" || !errors.Is(err, errWSProtocol) {
				t.Fatalf("read %q, %v; want ok and a protocol error", got, err)
			}
			if p := <-closes; !bytes.Equal(p, []byte{0x03, 0xea}) {
				t.Fatalf("close frame % x, want 03 ea (1002)", p)
			}
		})
	}
}

// Close ends a Read waiting for input, at once, and later Writes, with an
// error that is net.ErrClosed; the broker gets a close frame (1000).
func TestWSClientClose(t *testing.T) {
	closes := make(chan []byte, 1)
	addr := rawWSServer(t, func(c net.Conn, br *bufio.Reader) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, p := readClientFrame(t, br)
		closes <- p
	})
	ws := dialRawWS(t, addr)
	read := make(chan error, 1)
	go func() {
		_, err := ws.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the Read block (the test holds without it, checking less)
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10 s after Close")
	}
	if _, err := ws.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	if p := <-closes; !bytes.Equal(p, []byte{0x03, 0xe8}) {
		t.Fatalf("close frame % x, want 03 e8 (1000)", p)
	}
}

// A refused upgrade says why, with the broker's reason; a broker that
// does not agree to subprotocol mqtt is refused.
func TestWSClientHandshakeRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/forbidden" {
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return
		}
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + wsAcceptGUID))
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(sum[:]))
		w.WriteHeader(http.StatusSwitchingProtocols) // no subprotocol
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for path, want := range map[string]string{
		"/forbidden": "websocket handshake: status 403: origin not allowed",
		"/mqtt":      "websocket handshake: broker did not accept subprotocol mqtt",
	} {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, err = wsUpgrade(t.Context(), conn, ln.Addr().String(), path)
		conn.Close()
		if err == nil || err.Error() != want {
			t.Fatalf("%s: %v, want %q", path, err, want)
		}
	}
}

// A response whose headers do not end within maxUpgradeResponse bytes is
// refused, rather than read for as long as the broker sends.
func TestWSClientHandshakeBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nX-Endless: ")
		chunk := bytes.Repeat([]byte{'a'}, 4096)
		for { // until the client hangs up
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := wsUpgrade(ctx, conn, ln.Addr().String(), "/mqtt"); err == nil || ctx.Err() != nil {
		t.Fatalf("upgrade: %v (context: %v), want a refusal before the deadline", err, ctx.Err())
	}
}

// A connection the simulator drops (churn, over TCP and WebSocket) is
// reported lost by paho at once, with an error that is net.ErrClosed:
// paho took a read error reading "use of closed network connection" for
// a close of its own and said nothing, and the device waited out
// awaitLost's 10 s.
func TestDroppedConnectionReportedLost(t *testing.T) {
	b := startBroker(t)
	for _, url := range []string{"tcp://" + b.tcp, "ws://" + b.ws} {
		t.Run(strings.SplitN(url, ":", 2)[0], func(t *testing.T) {
			ep, err := ParseEndpoint(url, "", "")
			if err != nil {
				t.Fatal(err)
			}
			d, err := newDialer(ep, TLSOptions{}, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			lost, conns := make(chan error, 1), make(chan net.Conn, 1)
			c := newClient(d, clientSpec{id: "drop-" + ep.Transport, clean: true, keepAlive: time.Minute,
				onMessage: func(mqtt.Client, mqtt.Message) {}, onLost: func(err error) { lost <- err },
				track: func(c net.Conn) { conns <- c }})
			if err := newGate(1).connect(t.Context(), c, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			defer c.Disconnect(0)
			(<-conns).Close()
			select {
			case err := <-lost:
				if !errors.Is(err, net.ErrClosed) {
					t.Fatalf("lost with %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("paho did not report the dropped connection within 5 s")
			}
		})
	}
}

// BenchmarkWSClient is the bench client's side of MQTT over WebSocket
// on real loopback TCP, against a server that only frames: "write" one
// 80-byte message (a QoS 0 PUBLISH with a 64-byte payload) per
// operation, the server discarding; "read" a burst of 20 such messages
// written by the server at once, read as paho reads (a byte, the length
// byte, the body). "netconn" is the client the simulator had
// (coder/websocket's NetConn), "lean" this one (wsConn). Run with
// -benchmem:
//
//	go test -run XXX -bench WSClient -benchmem ./simulator/
func BenchmarkWSClient(b *testing.B) {
	pkt := append([]byte{0x30, 78}, bytes.Repeat([]byte{'x'}, 78)...)
	for _, impl := range []string{"netconn", "lean"} {
		b.Run("write/"+impl, func(b *testing.B) {
			addr := rawWSServer(b, func(c net.Conn, br *bufio.Reader) { _, _ = io.Copy(io.Discard, br) })
			c := dialBenchWS(b, impl, addr)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("read/"+impl, func(b *testing.B) {
			const burst = 20
			var frames []byte
			for range burst {
				frames = append(frames, serverFrame(0x82, pkt)...)
			}
			next := make(chan struct{}, 1)
			addr := rawWSServer(b, func(c net.Conn, br *bufio.Reader) {
				go func() { _, _ = io.Copy(io.Discard, br) }() // pongs, the close frame
				for range next {
					if _, err := c.Write(frames); err != nil {
						return
					}
				}
			})
			c := dialBenchWS(b, impl, addr)
			defer close(next)
			one, body := make([]byte, 1), make([]byte, len(pkt)-2)
			b.ReportAllocs()
			for b.Loop() {
				next <- struct{}{}
				for range burst {
					if _, err := io.ReadFull(c, one); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, one); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, body); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(burst * int64(len(pkt)))
		})
	}
}

// dialBenchWS opens a client connection of kind impl to addr.
func dialBenchWS(b *testing.B, impl, addr string) net.Conn {
	if impl == "lean" {
		return dialRawWS(b, addr)
	}
	c := dialNetConn(b, addr)
	b.Cleanup(func() { c.Close() })
	return c
}

// dialNetConn opens the client the simulator had before wsConn:
// coder/websocket's NetConn, as dial made it.
func dialNetConn(b *testing.B, addr string) net.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/mqtt", &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadLimit(-1)
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary)
}

// wss: the client upgrades on a TLS connection (dialTLS) and its messages
// go both ways, here through coder/websocket's server echoing them.
func TestWSClientOverTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			typ, m, err := ws.Read(r.Context())
			if err != nil || ws.Write(r.Context(), typ, m) != nil {
				return
			}
		}
	}))
	defer srv.Close()
	ep, err := ParseEndpoint("wss://"+strings.TrimPrefix(srv.URL, "https://")+"/mqtt", "", "")
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDialer(ep, TLSOptions{InsecureSkipVerify: true}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte("wss"), 1000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
}
