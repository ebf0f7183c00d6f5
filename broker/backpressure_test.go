package broker

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/internal/testmqtt"
)

func startBackpressureBroker(t *testing.T, maxWait time.Duration, tune ...func(*Options)) (*Broker, *Backpressure) {
	t.Helper()
	o := DefaultOptions() // client_queue_size 256, max_inflight 1024
	o.TCPAddr = "127.0.0.1:0"
	o.AllowAnonymous = true
	bp := NewBackpressure(maxWait)
	o.Logger, o.Hooks = storeLogger(), []mqtt.Hook{bp}
	for _, f := range tune {
		f(&o)
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	bp.Attach(b.Server)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(t.Context()) })
	return b, bp
}

// Ten publishers send a QoS 1 burst of 10,000 messages, far beyond the
// subscriber's send queue (256) and in-flight store (1,024), to one
// subscriber: every message arrives, none is dropped.
func TestBackpressureBurstArrivesComplete(t *testing.T) {
	b, bp := startBackpressureBroker(t, 5*time.Second)
	addr := b.TCP.Address()

	var got received
	sink := storeClient(t, addr, "sink", true, got.add)
	waitToken(t, "subscribe", sink.Subscribe("burst/#", 1, nil))

	const pubs, each = 10, 1000
	var wg sync.WaitGroup
	var failed atomic.Int64
	for p := range pubs {
		c := storeClient(t, addr, fmt.Sprintf("pub%d", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks := make([]paho3.Token, 0, each)
			for i := range each {
				toks = append(toks, c.Publish(fmt.Sprintf("burst/%d", p), 1, false, fmt.Sprintf("%d-%d", p, i)))
			}
			for _, tok := range toks {
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d publishes were not acknowledged", n)
	}
	checkFor(t, 30*time.Second, func() error {
		if n := got.distinct(); n < pubs*each {
			return fmt.Errorf("subscriber has %d of %d messages", n, pubs*each)
		}
		return nil
	})
	info := b.Server.Info
	if q, f := atomic.LoadInt64(&info.MessagesDropped), atomic.LoadInt64(&info.InflightDropped); q+f > 0 {
		t.Errorf("engine dropped %d (queue) + %d (in flight) messages", q, f)
	}
	t.Logf("waits %v, waited %.3fs, timeouts %v", testCounter(t, bp.waits), testCounter(t, bp.waited), testCounter(t, bp.timeouts))
}

// A subscriber that never reads nor acknowledges holds publishers back at
// most once, for maxWait; after that it is skipped and they run free.
func TestBackpressureStuckSubscriberIsSkipped(t *testing.T) {
	const maxWait = 300 * time.Millisecond
	b, bp := startBackpressureBroker(t, maxWait)
	addr := b.TCP.Address()

	// The stuck client: CONNECT and SUBSCRIBE "stuck/x" at QoS 1, then it
	// never reads again.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connect := []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 5, 's', 't', 'u', 'c', 'k'}
	subscribe := []byte{0x82, 12, 0, 1, 0, 7, 's', 't', 'u', 'c', 'k', '/', 'x', 1}
	if _, err := conn.Write(append(connect, subscribe...)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if _, ok := b.Server.Topics.Subscribers("stuck/x").Subscriptions["stuck"]; !ok {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})

	pub := storeClient(t, addr, "pub", true, nil)
	const n = 3000 // beyond the stuck client's in-flight store
	start := time.Now()
	for i := range n {
		waitToken(t, "publish", pub.Publish("stuck/x", 1, false, fmt.Sprint(i)))
	}
	el := time.Since(start)
	if got := testCounter(t, bp.timeouts); got != 1 {
		t.Errorf("timeouts = %v, want 1: the stuck subscriber should be waited for once", got)
	}
	if w := testCounter(t, bp.waited); w > 3*maxWait.Seconds() {
		t.Errorf("publisher held back %.3fs in all, want about %v", w, maxWait)
	}
	t.Logf("%d publishes in %v; waited %.3fs", n, el, testCounter(t, bp.waited))
}

// A subscriber that acknowledges steadily, but too slowly to drain from
// its high-water mark to half of it within one maxWait, is slow, not
// stuck: its publishers are held to its pace and it loses nothing. (Before,
// one such wait marked it stuck and its messages past the in-flight store
// were dropped, though acknowledged to their publisher: a live subscriber
// on a loaded machine lost 8,444 messages so in a cluster test.)
func TestBackpressureSlowSubscriberKeepsEverything(t *testing.T) {
	const maxWait = time.Second // the default
	// An in-flight store of 64 (high-water mark 48, low 24) keeps the
	// test short; the policy is the same at the default 1,024.
	b, bp := startBackpressureBroker(t, maxWait, func(o *Options) { o.MaxInflight = 64 })
	addr := b.TCP.Address()

	// About 10 acknowledgements a second: 24 take two or three rounds of
	// maxWait, and each round sees about 10 of them, above the floor of 3
	// (an eighth of 24): a rate a third of this, as on a loaded machine,
	// would still be slow, not stuck.
	var got received
	sink := testmqtt.Client(t, addr, "slow", true, true, func(m paho3.Message) { // in order: acknowledged after the handler
		time.Sleep(100 * time.Millisecond)
		got.add(m)
	})
	waitToken(t, "subscribe", sink.Subscribe("slow/#", 1, nil))

	const pubs, each = 3, 34 // beyond the in-flight store
	var wg sync.WaitGroup
	var failed atomic.Int64
	for p := range pubs {
		c := storeClient(t, addr, fmt.Sprintf("slowpub%d", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				tok := c.Publish(fmt.Sprintf("slow/%d", p), 1, false, fmt.Sprintf("%d-%d", p, i))
				if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d publishes were not acknowledged", n)
	}
	checkFor(t, 60*time.Second, func() error {
		if n := got.distinct(); n < pubs*each {
			return fmt.Errorf("subscriber has %d of %d messages", n, pubs*each)
		}
		return nil
	})
	info := b.Server.Info
	if q, f := atomic.LoadInt64(&info.MessagesDropped), atomic.LoadInt64(&info.InflightDropped); q+f > 0 {
		t.Errorf("engine dropped %d (queue) + %d (in flight) messages", q, f)
	}
	if to := testCounter(t, bp.timeouts); to != 0 {
		t.Errorf("timeouts = %v: the slow subscriber was taken for stuck", to)
	}
	t.Logf("waits %v, waited %.3fs", testCounter(t, bp.waits), testCounter(t, bp.waited))
}

// A subscriber taken for stuck (it acknowledged nothing for a round) that
// reads again, though more slowly than its publishers send, is waited
// for again once it has acknowledged what it drains from its high-water
// mark to half: its publishers are held to its pace and nothing more is
// dropped. (Before, it stayed skipped until its in-flight store drained to
// half its high-water mark, which publishers that outpace it, no longer
// held back, never let happen: it lost every message past its store for
// as long as they published. A live subscriber slow for one round on a
// loaded machine lost 34,041 of 80,000 so in TestClusterSlowSubscriberDefaults.)
func TestBackpressureStuckSubscriberRecovers(t *testing.T) {
	// The default wait; an in-flight store of 64 (high-water mark 48, low
	// 24) keeps the test short, as in the test above.
	b, bp := startBackpressureBroker(t, time.Second, func(o *Options) { o.MaxInflight = 64 })
	addr := b.TCP.Address()

	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	var got received
	sink := testmqtt.Client(t, addr, "slow", true, true, func(m paho3.Message) { // in order: acknowledged after the handler
		<-release
		time.Sleep(10 * time.Millisecond) // about 100 a second, slower than the publishers
		got.add(m)
	})
	waitToken(t, "subscribe", sink.Subscribe("slow/#", 1, nil))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := range 3 {
		c := storeClient(t, addr, fmt.Sprintf("pub%d", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Publish(fmt.Sprintf("slow/%d", p), 1, false, fmt.Sprintf("%d-%d", p, i)).WaitTimeout(60 * time.Second)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	dropped := func() int64 {
		return atomic.LoadInt64(&b.Server.Info.InflightDropped) + atomic.LoadInt64(&b.Server.Info.MessagesDropped)
	}

	// It reads nothing: one round, then it is skipped and its messages
	// past the store are dropped.
	checkFor(t, 30*time.Second, func() error {
		if testCounter(t, bp.timeouts) == 0 || dropped() == 0 {
			return fmt.Errorf("the subscriber that reads nothing is not skipped yet (timeouts %v, dropped %d)", testCounter(t, bp.timeouts), dropped())
		}
		return nil
	})
	waits := testCounter(t, bp.waits)
	releaseOnce.Do(func() { close(release) })
	checkFor(t, 30*time.Second, func() error {
		if testCounter(t, bp.waits) == waits {
			return fmt.Errorf("the subscriber reads again (%d received) but is still skipped: %d dropped", got.distinct(), dropped())
		}
		return nil
	})
	before, n := dropped(), got.distinct()
	checkFor(t, 60*time.Second, func() error {
		if k := got.distinct(); k < n+200 {
			return fmt.Errorf("the subscriber has %d messages since it was waited for again, want 200", k-n)
		}
		return nil
	})
	if d := dropped() - before; d != 0 {
		t.Errorf("%d messages dropped while the subscriber kept reading", d)
	}
}

// With mqtt.backpressure_wait 0 the hook takes no events at all.
func TestBackpressureOff(t *testing.T) {
	bp := NewBackpressure(0)
	for e := range 256 {
		if bp.Provides(byte(e)) {
			t.Errorf("Provides(%d) with backpressure off", e)
		}
	}
	on := NewBackpressure(time.Second)
	if !on.Provides(mqtt.OnQosPublish) || on.Provides(mqtt.OnConnect) {
		t.Error("Provides: want OnQosPublish and not OnConnect")
	}
	// OnPublish and OnPacketSent only while a subscriber is behind or
	// drains: the engine does not copy every packet into a hook that has
	// nothing to do.
	if on.Provides(mqtt.OnPublish) || on.Provides(mqtt.OnPacketSent) {
		t.Error("Provides: OnPublish or OnPacketSent with nobody behind")
	}
	on.nBehind.Add(1)
	on.nDrain.Add(1)
	if !on.Provides(mqtt.OnPublish) || !on.Provides(mqtt.OnPacketSent) {
		t.Error("Provides: want OnPublish and OnPacketSent with a subscriber behind")
	}
}
