package listeners

import (
	"bytes"
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

// unmask undoes the client's masking for every length and offset of the
// key, as the byte-at-a-time definition does.
func TestUnmask(t *testing.T) {
	key := []byte{0x12, 0x34, 0x56, 0x78}
	for n := range 40 {
		src := make([]byte, n)
		want := make([]byte, n)
		for i := range src {
			src[i] = byte(i * 7)
			want[i] = src[i] ^ key[i%4]
		}
		got := make([]byte, n)
		unmask(got, src, key)
		if !bytes.Equal(got, want) {
			t.Fatalf("len %d: %x, want %x", n, got, want)
		}
	}
}
