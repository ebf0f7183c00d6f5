package broker

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// startRetainedBroker starts a broker with the default 256-slot send
// queues, with or without the Retained hook.
func startRetainedBroker(t *testing.T, hook bool) (*Broker, *Retained) {
	t.Helper()
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.AllowAnonymous = true
	r := NewRetained()
	var hooks []mqtt.Hook
	if hook {
		hooks = append(hooks, r)
	}
	o.Logger, o.Hooks = storeLogger(), hooks
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	r.Attach(b.Server)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(t.Context()) })
	return b, r
}

// A subscription that matches far more retained messages than the client's
// send queue holds (a dashboard on devices/+/status of a large fleet) gets
// every one of them at QoS 0. At QoS 1 the QoS 1 messages among them are
// bounded by the client's in-flight window (mqtt.max_inflight, 1,024): the
// engine refuses the rest before any hook sees them.
func TestRetainedBeyondSendQueue(t *testing.T) {
	const n = 3000 // > client_queue_size 256 and > max_inflight 1024
	b, r := startRetainedBroker(t, true)
	for i := range n {
		qos := byte(i % 2)
		if err := b.Server.Publish(fmt.Sprintf("devices/d%04d/status", i), []byte(fmt.Sprintf(`{"online":true,"n":%d}`, i)), true, qos); err != nil {
			t.Fatal(err)
		}
	}
	for _, subQoS := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", subQoS), func(t *testing.T) {
			var got received
			c := storeClient(t, b.TCP.Address(), fmt.Sprintf("dash-%d", subQoS), true, got.add)
			waitToken(t, "subscribe", c.Subscribe("devices/+/status", subQoS, nil))
			want := n
			if subQoS > 0 {
				want = n/2 + int(DefaultOptions().MaxInflight)
			}
			checkFor(t, 30*time.Second, func() error {
				if k := got.distinct(); k < want {
					return fmt.Errorf("subscriber has %d of %d retained messages", k, want)
				}
				return nil
			})
			if subQoS == 0 { // the first: nothing was sent before
				checkFor(t, 10*time.Second, func() error {
					if s := atomic.LoadInt64(&b.Server.Info.MessagesSent); s < n {
						return fmt.Errorf("engine counted %d messages sent", s)
					}
					return nil
				})
				if s := atomic.LoadInt64(&b.Server.Info.MessagesSent); s != n {
					t.Errorf("engine counted %d messages sent, want %d", s, n)
				}
			}
		})
	}
	t.Logf("written past the send queue: %v", testCounter(t, r.written))
	if d := atomic.LoadInt64(&b.Server.Info.MessagesDropped); d != 0 {
		t.Errorf("MessagesDropped = %d, want 0", d)
	}
}
