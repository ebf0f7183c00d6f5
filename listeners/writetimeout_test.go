package listeners

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// smallTCPPair returns the two ends of a loopback TCP connection; with
// small, the client's receive and the server's send buffers are small.
func smallTCPPair(t *testing.T, small bool) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	if small {
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		_ = s.(*net.TCPConn).SetWriteBuffer(4096)
	}
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

// A write to a client that reads nothing fails once the timeout passes
// without progress, and closes the connection; one to a client that
// reads slowly, but reads, goes through whole, however long it takes.
func TestWriteTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	big := make([]byte, 4<<20)

	t.Run("stuck", func(t *testing.T) {
		s, c := smallTCPPair(t, true)
		w := WithWriteTimeout(s, timeout)
		_ = w.SetDeadline(time.Time{}) // keep-alive 0: the engine's own deadline is none
		n, err := w.Write(big)
		if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(big) {
			t.Fatalf("write to a client that reads nothing: %d bytes, %v", n, err)
		}
		// Closed: the client reads what was sent, then the end.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("the connection was not closed: %v", err)
		}
	})

	t.Run("slow", func(t *testing.T) {
		s, c := smallTCPPair(t, false)
		// A longer timeout here: the reader's pauses (30 ms) must stay
		// well inside half of it even when a loaded machine (-race, other
		// tests) leaves the reader's goroutine unscheduled for a while;
		// with 300 ms it failed once at load 15. The write as a whole
		// still takes longer than the timeout (32 MiB in 256 KiB reads,
		// 30 ms apart: about 4 s), which is what this case is about.
		const slowTimeout = 2 * time.Second
		w := WithWriteTimeout(s, slowTimeout)
		big := make([]byte, 32<<20) // beyond the kernel's buffers
		done := make(chan int64)
		go func() {
			var got int64
			buf := make([]byte, 256<<10)
			_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
			for got < int64(len(big)) {
				n, err := c.Read(buf)
				got += int64(n)
				if err != nil {
					break
				}
				time.Sleep(30 * time.Millisecond) // a slow reader, whose progress never stops for the timeout
			}
			done <- got
		}()
		n, err := w.Write(big)
		if err != nil || n != len(big) {
			t.Fatalf("write to a slow reader: %d of %d bytes, %v", n, len(big), err)
		}
		if got := <-done; got != int64(len(big)) {
			t.Fatalf("the slow reader got %d of %d bytes", got, len(big))
		}
	})

	t.Run("caller's deadline", func(t *testing.T) {
		s, _ := smallTCPPair(t, true)
		w := WithWriteTimeout(s, time.Hour)
		_ = w.SetWriteDeadline(time.Now().Add(timeout)) // earlier than the timeout: it holds
		if _, err := w.Write(big); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the caller's earlier deadline did not hold: %v", err)
		}
	})
}

// WriteBuffers (a large WebSocket message: header and payload in one
// writev) keeps Write's bound: to a client that reads nothing it fails
// once the timeout passes without progress, and closes the connection;
// to one that reads, it goes through whole.
func TestWriteTimeoutBuffers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("stuck", func(t *testing.T) {
		s, c := smallTCPPair(t, true)
		w := WithWriteTimeout(s, timeout)
		v := net.Buffers{[]byte{0x82, 127}, make([]byte, 4<<20)}
		n, err := writeBuffers(w, &v)
		if !errors.Is(err, os.ErrDeadlineExceeded) || n == 2+4<<20 {
			t.Fatalf("write to a client that reads nothing: %d bytes, %v", n, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("the connection was not closed: %v", err)
		}
	})
	t.Run("reading", func(t *testing.T) {
		s, c := smallTCPPair(t, false)
		w := WithWriteTimeout(s, timeout)
		got := make(chan int64, 1)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, _ := io.CopyN(io.Discard, c, 2+8<<20)
			got <- n
		}()
		v := net.Buffers{[]byte{0x82, 127}, make([]byte, 8<<20)}
		if n, err := writeBuffers(w, &v); err != nil || n != 2+8<<20 {
			t.Fatalf("%d bytes, %v", n, err)
		}
		if n := <-got; n != 2+8<<20 {
			t.Fatalf("the client read %d bytes", n)
		}
	})
}
