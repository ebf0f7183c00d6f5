package simulator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// hostileBroker accepts connections on 127.0.0.1:0, reads a CONNECT,
// answers CONNACK (accepted) and then writes send, and holds the
// connection until the test ends.
func hostileBroker(t *testing.T, send []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				if _, err := c.Read(buf); err != nil { // the CONNECT
					return
				}
				if _, err := c.Write(append([]byte{0x20, 0x02, 0x00, 0x00}, send...)); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c) // until the client or the test ends it
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// remainingLength encodes n as MQTT's variable byte integer.
func remainingLength(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		if n /= 128; n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// publishPacket is a QoS 0 PUBLISH on topic "t" with a payload of size bytes.
func publishPacket(size int) []byte {
	b := append([]byte{0x30}, remainingLength(3+size)...)
	b = append(b, 0x00, 0x01, 't')
	return append(b, bytes.Repeat([]byte{'x'}, size)...)
}

// TestBrokerPacketBounded: a broker that announces a packet larger than
// MaxBrokerPacket loses its client at once, before paho allocates it
// (without the bound paho waited, holding 256 MiB, for the rest); a
// packet of the largest size allowed is delivered.
func TestBrokerPacketBounded(t *testing.T) {
	connect := func(t *testing.T, addr string, onMessage mqtt.MessageHandler) (mqtt.Client, chan error) {
		t.Helper()
		ep, err := ParseEndpoint(addr, "", "")
		if err != nil {
			t.Fatal(err)
		}
		d, err := newDialer(ep, TLSOptions{}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		lost := make(chan error, 1)
		c := newClient(d, clientSpec{id: "bench-1", clean: true, onMessage: onMessage,
			onLost: func(err error) { lost <- err }})
		if err := newGate(1).connect(t.Context(), c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c, lost
	}

	t.Run("announced 256 MiB", func(t *testing.T) {
		addr := hostileBroker(t, []byte{0x30, 0xff, 0xff, 0xff, 0x7f})
		_, lost := connect(t, addr, func(mqtt.Client, mqtt.Message) {})
		select {
		case err := <-lost:
			if !errors.Is(err, errPacketTooLarge) {
				t.Fatalf("connection lost with %v, want %v", err, errPacketTooLarge)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the client still waits for a 256 MiB packet")
		}
	})

	t.Run("largest allowed", func(t *testing.T) {
		size := MaxBrokerPacket - 3
		addr := hostileBroker(t, publishPacket(size))
		got := make(chan int, 1)
		_, lost := connect(t, addr, func(_ mqtt.Client, m mqtt.Message) { got <- len(m.Payload()) })
		select {
		case n := <-got:
			if n != size {
				t.Fatalf("payload of %d bytes, want %d", n, size)
			}
		case err := <-lost:
			t.Fatalf("connection lost: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no message")
		}
	})
}

// TestPacketLimitFraming: the framing follows packets however the reads
// split them, and refuses a length over the bound or longer than 4 bytes.
func TestPacketLimitFraming(t *testing.T) {
	stream := append(append(append([]byte{0x20, 0x02, 0x00, 0x00}, publishPacket(200)...), 0xd0, 0x00), publishPacket(0)...)
	for _, tc := range []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"packets", stream, 203, nil},
		{"one byte over", stream, 202, errPacketTooLarge},
		{"five length bytes", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, 1 << 30, errPacketMalformed},
	} {
		for _, chunk := range []int{1, 2, 3, 7, len(tc.in)} {
			c := &packetLimitConn{max: tc.max}
			var err error
			for p := tc.in; len(p) > 0 && err == nil; p = p[min(chunk, len(p)):] {
				err = c.frame(p[:min(chunk, len(p))])
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("%s in reads of %d: %v, want %v", tc.name, chunk, err, tc.want)
			}
			if tc.want == nil && (c.inLength || c.body != 0) {
				t.Errorf("%s in reads of %d: not at a packet's start after the stream", tc.name, chunk)
			}
		}
	}
}

// TestBenchSaysWhyBrokerDrops: a bench run against a broker that
// announces a 256 MiB packet to each client says why its connections
// were lost.
func TestBenchSaysWhyBrokerDrops(t *testing.T) {
	addr := hostileBroker(t, []byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	ep, _ := ParseEndpoint(addr, "", "")
	// The packet comes with the CONNACK: each client loses its connection
	// as soon as it has connected, well within the run.
	res, err := RunBench(t.Context(), BenchConfig{Endpoint: ep, Scenario: ScenarioConns, Conns: 3,
		Duration: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("connection lost: %v: more than %d bytes (", errPacketTooLarge, MaxBrokerPacket)
	if len(res.Errors) != 1 || !strings.HasPrefix(res.Errors[0], want) {
		t.Fatalf("errors %q, want [%q…]", res.Errors, want)
	}
}
