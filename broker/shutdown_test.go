package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestShutdown: MQTT 5 clients get DISCONNECT 0x8B, 3.1.1 clients are
// closed, nothing is accepted afterwards, and Shutdown is idempotent.
func TestShutdown(t *testing.T) {
	b, _ := testBroker(t, nil)
	v5, _, _ := dialConnect(t, b.TCP.Address(), 5, "five")
	v3, _, _ := dialConnect(t, b.TCP.Address(), 4, "three")
	addr := b.TCP.Address()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v with only well-behaved clients", d)
	}
	for _, tt := range []struct {
		name string
		c    net.Conn
		want []byte
	}{
		{"mqtt 5", v5, []byte{0xe0}},
		{"mqtt 3.1.1", v3, nil},
	} {
		tt.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(tt.c)
		if !bytes.HasPrefix(got, tt.want) {
			t.Errorf("%s client read %x, want %x...", tt.name, got, tt.want)
		}
		if tt.want != nil && (len(got) < 3 || got[2] != 0x8B) {
			t.Errorf("%s client read %x, want DISCONNECT 0x8B", tt.name, got)
		}
		if tt.want == nil && len(got) != 0 {
			t.Errorf("%s client read %x, want a plain close", tt.name, got)
		}
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("TCP listener still accepts after Shutdown")
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if !b.Closing() {
		t.Fatal("Closing() false after Shutdown")
	}
}

// TestShutdownGrace: a connection that is not an MQTT client yet (a
// WebSocket that never sent CONNECT) holds Shutdown only until ctx ends;
// then it is closed, and the WebSocket handler answers 503.
func TestShutdownGrace(t *testing.T) {
	b, wsURL := testBroker(t, func(c *Options) { c.ConnectTimeout = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	checkFor(t, 5*time.Second, func() error {
		if b.WS.Stats().Open.Load() != 1 {
			return errors.New("the WebSocket connection never reached the engine")
		}
		return nil
	})

	grace, cancelGrace := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelGrace()
	start := time.Now()
	if err := b.Shutdown(grace); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("Shutdown took %v, want about the 300ms grace", d)
	}
	if _, _, err := ws.Read(ctx); err == nil {
		t.Fatal("connection still open after Shutdown")
	}
	if n := b.WS.Stats().Open.Load(); n != 0 {
		t.Fatalf("%d connections open after Shutdown", n)
	}
	_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("upgrade after Shutdown: %v, %v; want 503", resp, err)
	}
}

// TestShutdownStuckClient: an MQTT 5 client that stops reading, with the
// broker's writes to it blocked on a full socket, does not hold Shutdown
// beyond its grace period.
func TestShutdownStuckClient(t *testing.T) {
	b, _ := testBroker(t, nil)
	stuck, _, _ := dialConnect(t, b.TCP.Address(), 5, "stuck")
	sub := []byte{0x82, 0, 0, 1, 0, 0, 7, 'f', 'l', 'o', 'o', 'd', '/', '#', 0}
	sub[1] = byte(len(sub) - 2)
	if _, err := stuck.Write(sub); err != nil {
		t.Fatal(err)
	}
	// Read the SUBACK, then never read again.
	stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(stuck, make([]byte, 5)); err != nil {
		t.Fatalf("SUBACK: %v", err)
	}
	payload := bytes.Repeat([]byte{'x'}, 512<<10)
	deadline := time.Now().Add(10 * time.Second)
	// Dropped by the engine (its queue full) or by the send queue's bytes.
	for b.Figures().MessagesDropped == 0 && time.Now().Before(deadline) {
		if err := b.Server.Publish("flood/x", payload, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	if b.Figures().MessagesDropped == 0 {
		t.Fatal("the client's queue never filled")
	}

	grace, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- b.Shutdown(grace) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Shutdown blocked by a client that reads nothing for %v", time.Since(start))
	}
}
