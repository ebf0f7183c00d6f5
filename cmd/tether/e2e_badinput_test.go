package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestRandomBytes: connections that send garbage, over TCP and in
// WebSocket frames, are closed, and the broker goes on serving others.
func TestRandomBytes(t *testing.T) {
	cfg := testConfig(t)
	cfg.MQTT.ConnectTimeout = 2 * time.Second
	a := startTestApp(t, cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := func(i int) []byte {
		b := make([]byte, 1+rng.IntN(4096))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		switch i % 4 {
		case 1: // a plausible CONNECT header, then noise
			b[0] = 0x10
		case 2: // a valid CONNECT, then noise
			b = append(rawConnect(4, fmt.Sprintf("noise-%d", i)), b...)
		case 3: // a valid MQTT 5 CONNECT, then noise
			b = append(rawConnect(5, fmt.Sprintf("noise-%d", i)), b...)
		}
		return b
	}
	const n = 40
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		b := garbage(i)
		c := dialTCP(t, a.mqttAddr())
		var w net.Conn = c
		if i%2 == 1 {
			w = dialWS(t, wsURL(a), nil)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = w.Write(b)
		}()
		if i%2 == 0 {
			expectClosed(t, c, 5*time.Second)
		} else {
			expectClosed(t, w, 5*time.Second)
		}
	}
	wg.Wait()
	assertServing(t, a)
}

// TestMaxPacketSize: a packet over mqtt.max_packet_size disconnects its
// sender, with DISCONNECT 0x95 for MQTT 5; one at the limit goes through;
// MQTT 5 clients learn the limit from CONNACK.
func TestMaxPacketSize(t *testing.T) {
	const limit = 1024
	cfg := testConfig(t)
	cfg.MQTT.MaxPacketSize = limit
	a := startTestApp(t, cfg)
	for _, tt := range []struct {
		transport string
		version   byte
	}{{"tcp", 5}, {"ws", 5}, {"tcp", 4}, {"ws", 4}} {
		t.Run(fmt.Sprintf("%s-v%d", tt.transport, tt.version), func(t *testing.T) {
			dial := func() net.Conn {
				if tt.transport == "ws" {
					return dialWS(t, wsURL(a), nil)
				}
				return dialTCP(t, a.mqttAddr())
			}
			topic := nextID("big")
			sub := dial()
			ca := rawHandshake(t, sub, tt.version, nextID("sub"))
			if tt.version == 5 {
				if ca.Properties == nil || ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != limit {
					t.Fatalf("CONNACK does not carry Maximum Packet Size %d: %+v", limit, ca.Properties)
				}
			}
			sub.Write(rawSubscribe(tt.version, topic))
			sub.SetReadDeadline(time.Now().Add(5 * time.Second))
			if first, _, err := readRawPacket(sub); err != nil || first != 0x90 {
				t.Fatalf("SUBACK: %#x %v", first, err)
			}

			pub := dial()
			rawHandshake(t, pub, tt.version, nextID("pub"))
			header := len(rawPublish(tt.version, topic, nil)) + 1 // +1: a 2-byte length
			atLimit := rawPublish(tt.version, topic, bytes.Repeat([]byte{'x'}, limit-header))
			if len(atLimit) != limit {
				t.Fatalf("test packet is %d bytes, want %d", len(atLimit), limit)
			}
			pub.Write(atLimit)
			if first, body, err := readRawPacket(sub); err != nil || first != 0x30 || len(body) != limit-3 {
				t.Fatalf("subscriber got %#x (%d bytes), %v; want the %d-byte PUBLISH", first, len(body), err, limit)
			}

			pub.Write(rawPublish(tt.version, topic, bytes.Repeat([]byte{'y'}, limit)))
			rest := expectClosed(t, pub, 5*time.Second)
			if tt.version == 5 {
				if !bytes.Equal(rest, []byte{0xe0, 0x01, 0x95}) {
					t.Fatalf("MQTT 5 sender read %x before close, want DISCONNECT 0x95 (e00195)", rest)
				}
			} else if len(rest) != 0 {
				t.Fatalf("MQTT 3.1.1 sender read %x before close, want nothing", rest)
			}
		})
	}
	assertServing(t, a)
}

// rawHTTP sends req on a fresh connection and returns the response.
func rawHTTP(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	c := dialTCP(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ = io.ReadAll(resp.Body)
	}
	resp.Body.Close()
	return resp, string(body)
}

// TestWebSocketUpgrade: the /mqtt handshake's refusals have the right
// status and a body that says what is wrong.
func TestWebSocketUpgrade(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTP.AllowedOrigins = []string{"app.example.com", "*.fleet.example"}
	a := startTestApp(t, cfg)
	host := a.httpAddr()
	upgrade := func(extra string) string {
		return "GET /mqtt HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
	}
	tests := []struct {
		name     string
		req      string
		status   int
		bodyHas  string
		protocol string
	}{
		{"plain GET", "GET /mqtt HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 426, "MQTT over WebSocket", ""},
		{"no subprotocol", upgrade(""), 400, `subprotocol "mqtt"`, ""},
		{"wrong subprotocol", upgrade("Sec-WebSocket-Protocol: wamp\r\n"), 400, `subprotocol "mqtt"`, ""},
		{"older clients' subprotocol", upgrade("Sec-WebSocket-Protocol: mqttv3.1\r\n"), 101, "", "mqttv3.1"},
		{"foreign origin", upgrade("Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://evil.example\r\n"), 403, "evil.example", ""},
		{"same origin", upgrade("Sec-WebSocket-Protocol: mqtt\r\nOrigin: http://" + host + "\r\n"), 101, "", "mqtt"},
		{"allowed origin", upgrade("Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://app.example.com\r\n"), 101, "", "mqtt"},
		{"allowed wildcard origin", upgrade("Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://bus7.fleet.example\r\n"), 101, "", "mqtt"},
		{"no origin (not a browser)", upgrade("Sec-WebSocket-Protocol: mqtt\r\n"), 101, "", "mqtt"},
		{"mqtt among others", upgrade("Sec-WebSocket-Protocol: wamp, mqtt\r\n"), 101, "", "mqtt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawHTTP(t, host, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tt.status, body)
			}
			if !strings.Contains(body, tt.bodyHas) {
				t.Fatalf("body %q does not say %q", body, tt.bodyHas)
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); tt.status == 101 && got != tt.protocol {
				t.Fatalf("Sec-WebSocket-Protocol %q, want %q", got, tt.protocol)
			}
		})
	}
	assertServing(t, a)
}

// TestTextFrameCloses: a text message closes the connection with 1003
// [MQTT-6.0.0-1].
func TestTextFrameCloses(t *testing.T) {
	a := startTestApp(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageBinary, rawConnect(4, "text")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil || len(b) < 2 || b[0] != 0x20 {
		t.Fatalf("CONNACK: %x %v", b, err)
	}
	if err := c.Write(ctx, websocket.MessageText, rawPublish(4, "t", []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusUnsupportedData {
		t.Fatalf("read after a text message: %v (status %v), want close 1003", err, got)
	}
	assertServing(t, a)
}

// TestForwardedFor: X-Forwarded-For is believed only from trusted proxies.
func TestForwardedFor(t *testing.T) {
	for _, tt := range []struct {
		name    string
		proxies []string
		xff     string
		want    string // remote host the broker records
	}{
		{"untrusted peer", nil, "203.0.113.7", "127.0.0.1"},
		{"trusted peer", []string{"127.0.0.1"}, "203.0.113.7", "203.0.113.7"},
		{"trusted chain", []string{"127.0.0.0/8", "10.0.0.0/8"}, "198.51.100.2, 10.1.1.1", "198.51.100.2"},
		{"spoofed hop before an untrusted one", []string{"127.0.0.1"}, "10.9.9.9, 198.51.100.3", "198.51.100.3"},
		{"malformed chain", []string{"127.0.0.1"}, "not-an-ip", "127.0.0.1"},
		{"trusted peer, no header", []string{"127.0.0.1"}, "", "127.0.0.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.HTTP.TrustedProxies = tt.proxies
			a := startTestApp(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h := http.Header{}
			if tt.xff != "" {
				h.Set("X-Forwarded-For", tt.xff)
			}
			ws, _, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPHeader: h})
			if err != nil {
				t.Fatal(err)
			}
			nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
			defer nc.Close()
			id := nextID("xff")
			rawHandshake(t, nc, 4, id)
			cl, ok := a.broker.Server.Clients.Get(id)
			if !ok {
				t.Fatalf("client %s not known to the broker", id)
			}
			host, _, _ := net.SplitHostPort(cl.Net.Remote)
			if host != tt.want {
				t.Fatalf("remote %q, want host %q", cl.Net.Remote, tt.want)
			}
		})
	}
}

// TestStalledConnections: a connection that never sends CONNECT, and an
// HTTP request or WebSocket upgrade that never finishes, are closed after
// the configured timeouts.
func TestStalledConnections(t *testing.T) {
	cfg := testConfig(t)
	cfg.MQTT.ConnectTimeout = 300 * time.Millisecond
	cfg.HTTP.HandshakeTimeout = 300 * time.Millisecond
	a := startTestApp(t, cfg)
	half := rawConnect(4, "half")[:5]
	tests := []struct {
		name string
		open func(t *testing.T) net.Conn
	}{
		{"tcp, silent", func(t *testing.T) net.Conn { return dialTCP(t, a.mqttAddr()) }},
		{"tcp, half a CONNECT", func(t *testing.T) net.Conn {
			c := dialTCP(t, a.mqttAddr())
			c.Write(half)
			return c
		}},
		{"http, headers never end", func(t *testing.T) net.Conn {
			c := dialTCP(t, a.httpAddr())
			io.WriteString(c, "GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n")
			return c
		}},
		{"websocket, silent after upgrade", func(t *testing.T) net.Conn { return dialWS(t, wsURL(a), nil) }},
		{"websocket, half a CONNECT", func(t *testing.T) net.Conn {
			c := dialWS(t, wsURL(a), nil)
			c.Write(half)
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			c := tt.open(t)
			expectClosed(t, c, 5*time.Second)
			if d := time.Since(start); d < 250*time.Millisecond {
				t.Fatalf("closed after %v, before the timeout", d)
			}
		})
	}
	assertServing(t, a)
}

// TestManyConnectionsNoLeak: 1,000 connections opened and dropped, some
// before and some after CONNECT, leave no connection and no goroutine
// behind (TestMain's goleak check covers the whole package as well).
func TestManyConnectionsNoLeak(t *testing.T) {
	a := startTestApp(t, testConfig(t))
	assertServing(t, a)
	base := runtime.NumGoroutine()
	const n = 1000
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c net.Conn
			var err error
			if i%5 == 4 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				ws, _, derr := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
				if derr != nil {
					t.Error(derr)
					return
				}
				c = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
			} else if c, err = net.Dial("tcp", a.mqttAddr()); err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if i%2 == 0 {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write(rawConnect(4, fmt.Sprintf("churn-%d", i)))
				if _, _, err := readRawPacket(c); err != nil {
					t.Errorf("CONNACK %d: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	checkFor(t, 10*time.Second, func() error {
		open := a.broker.TCP.Stats().Open.Load() + a.broker.WS.Stats().Open.Load()
		if open != 0 {
			return fmt.Errorf("%d connections still open", open)
		}
		if g := runtime.NumGoroutine(); g > base+5 {
			return fmt.Errorf("%d goroutines, %d before", g, base)
		}
		return nil
	})
	if got := a.broker.TCP.Stats().Accepted.Load() + a.broker.WS.Stats().Accepted.Load(); got < n {
		t.Fatalf("listeners accepted %d connections, want at least %d", got, n)
	}
	assertServing(t, a)
}

// TestWebSocketFraming: the broker reads MQTT as a byte stream across
// WebSocket frames and messages [MQTT-6.0.0-2]: a CONNECT split over
// several frames of one message and over several messages, then SUBSCRIBE
// and PUBLISH together in one frame, all work.
func TestWebSocketFraming(t *testing.T) {
	a := startTestApp(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()

	connect := rawConnect(4, "framing")
	// Frames 1 and 2 of one message, then the rest as two more messages.
	w, err := c.Writer(ctx, websocket.MessageBinary)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(connect[:1])
	w.Write(connect[1:4])
	w.Close()
	c.Write(ctx, websocket.MessageBinary, connect[4:9])
	c.Write(ctx, websocket.MessageBinary, connect[9:])
	if _, b, err := c.Read(ctx); err != nil || len(b) != 4 || b[0] != 0x20 || b[3] != 0 {
		t.Fatalf("CONNACK: %x %v", b, err)
	}

	both := append(rawSubscribe(4, "framing/t"), rawPublish(4, "framing/t", []byte("together"))...)
	if err := c.Write(ctx, websocket.MessageBinary, both); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 5+len(rawPublish(4, "framing/t", []byte("together"))) {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("after %x: %v", got, err)
		}
		got = append(got, b...)
	}
	r := bytes.NewReader(got)
	if first, _, err := readRawPacket(r); err != nil || first != 0x90 {
		t.Fatalf("want SUBACK first, got %#x %v (stream %x)", first, err, got)
	}
	if first, body, err := readRawPacket(r); err != nil || first != 0x30 || !bytes.HasSuffix(body, []byte("together")) {
		t.Fatalf("want the PUBLISH back, got %#x %x %v", first, body, err)
	}
}
