package broker

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkLargeQoS0Routing routes QoS 0 messages of 64 KiB from one
// publisher to four subscribers that read all (raw sockets on both
// sides, so that the clients cost little of the shared CPU), with the
// send queue's byte bounds at their defaults and off (the engine's own
// delivery, a copy of the message per subscriber). ns/op is per message
// routed to all four; dropped/op what the engine or the bounds dropped
// (no Backpressure hook here); gc/1k-msgs the collections.
//
//	go test -run XXX -bench LargeQoS0Routing -benchtime 20000x ./broker/
//
// SENDQ_BENCH=on or off runs one of the two only, for alternating runs.
func BenchmarkLargeQoS0Routing(b *testing.B) {
	for _, mode := range []string{"on", "off"} {
		if m := os.Getenv("SENDQ_BENCH"); m != "" && m != mode {
			continue
		}
		b.Run("bounds="+mode, func(b *testing.B) {
			o := DefaultOptions()
			if mode == "off" {
				o.ClientQueueBytes, o.ClientQueueTotalBytes = 0, 0
			}
			o.TCPAddr, o.AllowAnonymous, o.Logger = "127.0.0.1:0", true, storeLogger()
			bk, err := New(o)
			if err != nil {
				b.Fatal(err)
			}
			if err := bk.Start(); err != nil {
				b.Fatal(err)
			}
			defer bk.Shutdown(b.Context())
			addr := bk.TCP.Address()

			const subs, size, topic = 4, 64 << 10, "bench/large"
			var buf bytes.Buffer
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: topic,
				Payload: bytes.Repeat([]byte{'x'}, size)}
			if err := pk.PublishEncode(&buf); err != nil {
				b.Fatal(err)
			}
			msg := buf.Bytes()
			var got [subs]atomic.Int64
			for i := range subs {
				c := benchSubscriber(b, addr, fmt.Sprintf("bench-sub-%d", i), "bench/#")
				go func() { _, _ = io.Copy(countWriter{&got[i]}, c) }()
			}
			pub, first, _ := dialConnect(b, addr, 4, "bench-pub")
			if first != 0x20 {
				b.Fatalf("CONNACK %#x", first)
			}
			dropped := func() int64 { return bk.Figures().MessagesDropped } // the engine's and the bounds'

			b.SetBytes(size)
			cpu0, gc0 := processCPU(), gcStats()
			b.ResetTimer()
			for range b.N {
				if _, err := pub.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			want := int64(b.N) * int64(len(msg))
			deadline := time.Now().Add(5 * time.Minute)
			all := func() (n int64) {
				for i := range subs {
					n += got[i].Load()
				}
				return n
			}
			for all() < subs*want-dropped()*int64(len(msg)) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(dropped())/float64(b.N), "dropped/op")
			// The process's CPU time (broker and clients): steadier than the
			// rate on a machine shared with other work.
			b.ReportMetric((processCPU()-cpu0).Seconds()*1e6/float64(b.N), "cpu-µs/op")
			gc := gcStats()
			b.ReportMetric(float64(gc.cycles-gc0.cycles)*1000/float64(b.N), "gc/1k-msgs")
			b.ReportMetric((gc.cpu-gc0.cpu)*1e6/float64(b.N), "gc-cpu-µs/op")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type countWriter struct{ n *atomic.Int64 }

func (w countWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// benchSubscriber is a 3.1.1 client subscribed at QoS 0 to filter, its
// CONNACK and SUBACK read.
func benchSubscriber(b *testing.B, addr, id, filter string) net.Conn {
	c, first, _ := dialConnect(b, addr, 4, id)
	if first != 0x20 {
		b.Fatalf("CONNACK %#x", first)
	}
	sub := []byte{0x82, byte(2 + 2 + len(filter) + 1), 0, 1, 0, byte(len(filter))}
	sub = append(append(sub, filter...), 0)
	if _, err := c.Write(sub); err != nil {
		b.Fatal(err)
	}
	ack := make([]byte, 5)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x90 {
		b.Fatalf("SUBACK %x %v", ack, err)
	}
	return c
}
