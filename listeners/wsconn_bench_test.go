package listeners

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
)

// BenchmarkWebSocketRead is the server's side of a client's bursts over
// real loopback TCP: 20 binary messages of 80 bytes (a QoS 0 PUBLISH
// with a 64-byte payload each, as clients send them: one per message) in
// one write, read by the engine's connection (wsConn) into a 2 KB buffer
// as the engine reads. Reports the engine's Read calls per burst; run
// with -benchmem. Compare ns/op before and after within one run of a
// quiet machine only.
//
//	go test -run XXX -bench WebSocketRead -benchmem ./listeners/
func BenchmarkWebSocketRead(b *testing.B) {
	const burst, size = 20, 80
	msg := bytes.Repeat([]byte{0x30}, size)
	var frames []byte
	for range burst {
		frames = append(frames, maskedFrame(msg)...)
	}
	done := make(chan int, 1)
	url := wsServer(b, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
		buf := make([]byte, 2048)
		got, reads := 0, 0
		for {
			n, err := c.Read(buf)
			if err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
			got, reads = got+n, reads+1
			if got >= burst*size {
				done <- reads
				got, reads = 0, 0
			}
		}
	})
	c, _ := rawUpgrade(b, url, nil)
	reads := 0
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(frames); err != nil {
			b.Fatal(err)
		}
		reads += <-done
	}
	b.ReportMetric(float64(reads)/float64(b.N), "reads/burst")
}

// BenchmarkWebSocketWrite is the engine's writes to a WebSocket client
// over real loopback TCP: one Write of a 96-byte packet (a QoS 1
// PUBLISH with a 64-byte payload) or of a 2 KiB burst (the engine's
// write buffer, mqtt's ClientNetWriteBufferSize, flushed), each going out
// as one binary message, while the client reads and discards them. The
// "tcp" cases write the same bytes through the TCP listener (the same
// connection wrappers): the cost of the WebSocket layer is the
// difference. Run with -benchmem.
//
//	go test -run XXX -bench WebSocketWrite -benchmem ./listeners/
func BenchmarkWebSocketWrite(b *testing.B) {
	for _, size := range []int{96, 2048} {
		pkt := bytes.Repeat([]byte{0x32}, size)
		b.Run(fmt.Sprintf("ws/%d", size), func(b *testing.B) {
			conns := make(chan net.Conn, 1)
			url := wsServer(b, NewWebSocket(&WebSocketOptions{ConnectTimeout: -1}), func(_ string, c net.Conn) error {
				conns <- c
				_, _ = io.Copy(io.Discard, c)
				return nil
			})
			c, br := rawUpgrade(b, url, nil)
			go func() { _, _ = io.Copy(io.Discard, br) }()
			benchWrites(b, <-conns, pkt)
			_ = c.Close()
		})
		b.Run(fmt.Sprintf("tcp/%d", size), func(b *testing.B) {
			l := NewTCP("127.0.0.1:0", &TCPOptions{ConnectTimeout: -1})
			if err := l.Init(nil); err != nil {
				b.Fatal(err)
			}
			conns := make(chan net.Conn, 1)
			go l.Serve(func(_ string, c net.Conn) error {
				conns <- c
				_, _ = io.Copy(io.Discard, c)
				return nil
			})
			defer func() {
				l.Stop()
				l.CloseConns()
			}()
			c, err := net.Dial("tcp", l.Address())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			go func() { _, _ = io.Copy(io.Discard, c) }()
			benchWrites(b, <-conns, pkt)
		})
	}
}

func benchWrites(b *testing.B, c net.Conn, pkt []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := c.Write(pkt); err != nil {
			b.Fatal(err)
		}
	}
}
