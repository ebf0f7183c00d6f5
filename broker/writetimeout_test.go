package broker

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// A client that subscribes at QoS 1 and then reads nothing, with
// keep-alive 0, must not hold the publishers of what it subscribes to.
// The engine writes to a client under the client's lock, and routing a
// QoS 1 message to it takes that lock (for a packet id): once the kernel's
// buffers towards the stuck client were full, the publisher's connection
// stopped in the middle of routing, for good, and the well-behaved
// subscriber got nothing more (about 70 of 400 messages of 64 KiB).
// limits.write_timeout drops the stuck client instead.
func TestStuckQoS1SubscriberDoesNotHoldPublishers(t *testing.T) {
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.AllowAnonymous = true
	o.Logger = storeLogger()
	o.WriteTimeout = 2 * time.Second // the bound under test; short, to keep the test short
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(t.Context()) })
	addr := b.TCP.Address()

	stuck, first, _ := dialConnect(t, addr, 4, "stuck") // keep-alive 0
	if first != 0x20 {
		t.Fatalf("CONNACK %#x", first)
	}
	_ = stuck.(*net.TCPConn).SetReadBuffer(4096)
	filter := "big/#"
	sub := append([]byte{0x82, byte(2 + 2 + len(filter) + 1), 0, 1, 0, byte(len(filter))}, filter...)
	if _, err := stuck.Write(append(sub, 1)); err != nil { // QoS 1
		t.Fatal(err)
	}
	_ = stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	if ack := make([]byte, 5); func() error { _, err := io.ReadFull(stuck, ack); return err }() != nil || ack[0] != 0x90 || ack[4] != 1 {
		t.Fatalf("SUBACK %x", ack)
	}
	// From here on the stuck client reads nothing.

	var got received
	reader := storeClient(t, addr, "reader", true, got.add)
	waitToken(t, "subscribe", reader.Subscribe(filter, 1, nil))
	// Publishing runs on its own: without the bound, the client library's
	// queue fills once the broker stops reading the publisher, and Publish
	// blocks until the client is disconnected (at cleanup, before the wait).
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	pub := storeClient(t, addr, "pub", true, nil)

	const n = 400 // 25 MiB: far beyond the kernel's buffers towards the stuck client
	wg.Add(1)
	go func() {
		defer wg.Done()
		payload := make([]byte, 64<<10)
		for i := range n {
			copy(payload, fmt.Sprintf("%08d", i))
			pub.Publish("big/x", 1, false, append([]byte(nil), payload...))
		}
	}()
	checkFor(t, 90*time.Second, func() error {
		if k := got.distinct(); k < n {
			return fmt.Errorf("the reader has %d of %d messages: the publisher is held by the client that reads nothing", k, n)
		}
		return nil
	})
	checkFor(t, 10*time.Second, func() error {
		if _, ok := b.Server.Clients.Get("stuck"); ok {
			return fmt.Errorf("the client that reads nothing is still connected")
		}
		return nil
	})
}
