package broker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
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

// TestSubscribeWindowsClose: once the engine is done with a SUBSCRIBE
// (its SUBACK and its retained messages sent), neither the access hook
// nor the retained hook keeps anything open for it, though the client
// sends nothing more. Both kept it until the client's next packet, which
// a subscriber that only receives sends a keep-alive later: meanwhile
// every packet of every client paid the retained hook's call and a map
// lookup, and every delivery's access check another. The 3.1.1 client
// (paho.mqtt.golang) sends nothing after its SUBSCRIBE, and found both
// open 10 s later before the fix; paho.golang's MQTT 5 client sends a
// packet of its own at once, which closed them even then.
func TestSubscribeWindowsClose(t *testing.T) {
	r := NewRetained()
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), DefaultRetainedLimitOptions(), r)
	r.Attach(e.b.Server)
	if !e.auth.notesSubscribes() {
		t.Fatal("the access hook notes no SUBSCRIBE at the defaults")
	}
	pass := e.user(t, "watcher", devices.RoleViewer)
	if err := e.b.Server.Publish("devices/d1/status", []byte(`{"online":true}`), true, 0); err != nil {
		t.Fatal(err)
	}
	for _, version := range []string{"5", "3.1.1"} {
		t.Run(version, func(t *testing.T) {
			id := "watcher-" + version
			if version == "5" {
				l, _ := dial5(t, e.tcp, id, "watcher", pass, 0)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				sa, err := l.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
					{Topic: "devices/+/status"}, {Topic: "secret/#"}}})
				// paho reports the refused filter as an error; the SUBACK tells.
				if sa == nil || len(sa.Reasons) != 2 || sa.Reasons[0] != 0 || sa.Reasons[1] != packets.ErrNotAuthorized.Code {
					t.Fatalf("SUBACK %v: %v", sa, err)
				}
				select {
				case <-l.got:
				case <-time.After(10 * time.Second):
					t.Fatal("no retained message")
				}
			} else {
				got := make(chan struct{}, 1)
				c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID(id).
					SetUsername("watcher").SetPassword(pass).SetAutoReconnect(false))
				waitToken(t, "connect", c.Connect())
				t.Cleanup(func() { c.Disconnect(0) })
				waitToken(t, "subscribe", c.Subscribe("devices/+/status", 0, func(paho3.Client, paho3.Message) {
					select {
					case got <- struct{}{}:
					default:
					}
				}))
				select {
				case <-got:
				case <-time.After(10 * time.Second):
					t.Fatal("no retained message")
				}
			}
			checkFor(t, 10*time.Second, func() error {
				if n := e.auth.nSubscribing.Load(); n != 0 {
					return fmt.Errorf("the access hook holds %d SUBSCRIBE(s) the engine is done with", n)
				}
				if n := r.open.Load(); n != 0 {
					return fmt.Errorf("the retained hook has %d window(s) open", n)
				}
				if r.Provides(mqtt.OnPacketProcessed) || r.Provides(mqtt.OnPacketRead) {
					return fmt.Errorf("the retained hook still asks for every packet")
				}
				return nil
			})
		})
	}
}
