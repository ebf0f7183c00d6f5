package listeners

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-done
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// writeCounter counts the writes that reach the socket.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Conn.Write(p)
}

var puback = []byte{0x40, 0x02, 0x00, 0x01}

// readExactly reads n bytes from c within a deadline.
func readExactly(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

func TestAckConnHoldsAcksUntilNextRead(t *testing.T) {
	server, client := tcpPair(t)
	wc := &writeCounter{Conn: server}
	ac := newAckConn(wc)
	// A burst as the engine handles it: three PUBACKs while not reading.
	for i := byte(1); i <= 3; i++ {
		if _, err := ac.Write([]byte{0x40, 0x02, 0x00, i}); err != nil {
			t.Fatal(err)
		}
	}
	if n := wc.writes.Load(); n != 0 {
		t.Fatalf("%d writes before the next read, want the acks held", n)
	}
	// The next Read sends them, in one write, before it waits for input.
	go func() {
		_, _ = client.Write([]byte{0xc0, 0x00}) // PINGREQ
	}()
	buf := make([]byte, 16)
	if _, err := ac.Read(buf); err != nil {
		t.Fatal(err)
	}
	got := readExactly(t, client, 12)
	want := []byte{0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3}
	if !bytes.Equal(got, want) {
		t.Fatalf("client got % x, want % x", got, want)
	}
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("%d writes for three acks, want 1", n)
	}
}

func TestAckConnWritesThroughWhileReading(t *testing.T) {
	server, client := tcpPair(t)
	ac := newAckConn(server)
	readDone := make(chan error, 1)
	go func() {
		_, err := ac.Read(make([]byte, 16)) // waits: the client sends nothing yet
		readDone <- err
	}()
	// Once the reader waits for input, an ack from elsewhere is not held:
	// poll until it arrives.
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if !ac.reading.Load() {
			return errors.New("reader never started reading")
		}
		return nil
	})
	if _, err := ac.Write(puback); err != nil {
		t.Fatal(err)
	}
	if got := readExactly(t, client, 4); !bytes.Equal(got, puback) {
		t.Fatalf("client got % x", got)
	}
	_, _ = client.Write([]byte{0xc0, 0x00})
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
}

func TestAckConnKeepsOrderWithOtherWrites(t *testing.T) {
	server, client := tcpPair(t)
	ac := newAckConn(server)
	publish := []byte{0x30, 0x05, 0x00, 0x01, 'a', 'x', 'y'}
	for _, p := range [][]byte{puback, publish, puback} {
		if _, err := ac.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	// The PUBLISH went out with the ack before it; the last ack is held
	// until Flush (a hook about to wait) or Close.
	if got := readExactly(t, client, 11); !bytes.Equal(got, append(append([]byte{}, puback...), publish...)) {
		t.Fatalf("client got % x", got)
	}
	FlushAcks(ac)
	if got := readExactly(t, client, 4); !bytes.Equal(got, puback) {
		t.Fatalf("after Flush client got % x", got)
	}
	if _, err := ac.Write(puback); err != nil {
		t.Fatal(err)
	}
	if err := ac.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readExactly(t, client, 4); !bytes.Equal(got, puback) {
		t.Fatalf("after Close client got % x", got)
	}
}

func TestIsAck(t *testing.T) {
	for _, tc := range []struct {
		p    []byte
		want bool
	}{
		{[]byte{0x40, 0x02, 0, 1}, true},           // PUBACK 3.1.1
		{[]byte{0x40, 0x03, 0, 1, 0x10}, true},     // PUBACK 5 with a reason code
		{[]byte{0x50, 0x02, 0, 1}, true},           // PUBREC
		{[]byte{0x62, 0x02, 0, 1}, true},           // PUBREL
		{[]byte{0x70, 0x02, 0, 1}, true},           // PUBCOMP
		{[]byte{0x40, 0x02, 0, 1, 0x40, 2}, false}, // more than one packet
		{[]byte{0x30, 0x02, 0, 0}, false},          // PUBLISH
		{[]byte{0xd0, 0x00}, false},                // PINGRESP: not held
		{[]byte{0x40}, false},
	} {
		if got := isAck(tc.p); got != tc.want {
			t.Errorf("isAck(% x) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

// BenchmarkAckWrites is what justifies ackConn: a burst of 20 incoming
// QoS 1 PUBLISH packets (what one 2 KB read holds at 64-byte payloads)
// answered with 20 PUBACKs, over real loopback TCP. Plain: one write
// syscall per PUBACK, as the engine does on a bare connection; held: one
// per burst. Reports write syscalls per burst; run with -benchmem.
func BenchmarkAckWrites(b *testing.B) {
	const burst = 20
	for _, tc := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"plain", func(c net.Conn) net.Conn { return c }},
		{"held", func(c net.Conn) net.Conn { return newAckConn(c) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			server, client := tcpPair(b)
			wc := &writeCounter{Conn: server}
			conn := tc.wrap(wc)
			go func() { _, _ = io.Copy(io.Discard, client) }()
			// The peer's next burst is always ready, as under load.
			ping := []byte{0xc0, 0x00}
			in := make([]byte, 2)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < burst; j++ {
					if _, err := conn.Write(puback); err != nil {
						b.Fatal(err)
					}
				}
				// The reader's next Read: feed it one byte pair so it
				// returns at once.
				if _, err := client.Write(ping); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, in); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(wc.writes.Load())/float64(b.N), "writes/burst")
		})
	}
}

// Through a real TCP listener, with and without a packet size limit (the
// broker always sets one): the engine's connection holds acknowledgements
// until it reads next. The listener's byte count sees only what reached
// the socket.
func TestTCPListenerHoldsAcks(t *testing.T) {
	for _, max := range []uint32{0, 1 << 20} {
		t.Run(fmt.Sprintf("max_packet_size=%d", max), func(t *testing.T) {
			l := NewTCP("127.0.0.1:0", &TCPOptions{MaxPacketSize: max, ConnectTimeout: 5 * time.Second})
			if err := l.Init(nil); err != nil {
				t.Fatal(err)
			}
			heldOut := make(chan int64, 1)
			go l.Serve(func(id string, c net.Conn) error {
				in := make([]byte, 2)
				if _, err := io.ReadFull(c, in); err != nil {
					return err
				}
				for range 3 {
					if _, err := c.Write(puback); err != nil {
						return err
					}
				}
				heldOut <- l.Stats().BytesOut.Load()
				_, err := io.ReadFull(c, in) // flushes, then waits for the client
				return err
			})
			defer func() {
				l.Stop()
				l.CloseConns()
			}()
			c, err := net.Dial("tcp", l.Address())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte{0xc0, 0x00}); err != nil {
				t.Fatal(err)
			}
			if n := <-heldOut; n != 0 {
				t.Errorf("%d bytes sent before the engine read again, want the acks held", n)
			}
			if got := readExactly(t, c, 12); !bytes.Equal(got, bytes.Repeat(puback, 3)) {
				t.Fatalf("client got % x", got)
			}
			_, _ = c.Write([]byte{0xc0, 0x00})
		})
	}
}

// TestAckConnCloseDuringBlockedWrite: Close ends a write that a client
// reading nothing has blocked (the engine stopping such a client, or a
// take-over of its session), instead of waiting for it for good.
func TestAckConnCloseDuringBlockedWrite(t *testing.T) {
	a, b := net.Pipe() // b is never read: a's writes block
	defer b.Close()
	c := newAckConn(a)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 100)) // not an acknowledgement: written through
		wrote <- err
	}()
	// Until the write holds the lock.
	deadline := time.Now().Add(10 * time.Second)
	for c.mu.TryLock() {
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the write never started")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second): // a hang guard, not a speed claim
		t.Fatal("Close still waits for a write the client never reads")
	}
	if err := <-wrote; err == nil {
		t.Error("the blocked write reported success")
	}
}
