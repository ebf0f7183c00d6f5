package sessions

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// sessionOf returns the listing of session id.
func sessionOf(st *Store, id string) (Session, bool) {
	for _, s := range st.Sessions() {
		if s.ClientID == id {
			return s, true
		}
	}
	return Session{}, false
}

// A queue with a small bound: what fits is delivered, in order, when the
// session returns; the overflow is refused for that session, counted and
// shown on the session; the publisher is acknowledged either way.
func TestQueueBound(t *testing.T) {
	dir := t.TempDir()
	n := startStoreNode(t, dir, &Options{MaxQueuedMessages: 10})
	sub := storeClient(t, n.addr, "bound-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("bound/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "bound-sub")
	pub := storeClient(t, n.addr, "bound-pub", true, nil)
	for i := range 25 {
		waitToken(t, "publish", pub.Publish("bound/x", 1, false, fmt.Sprintf("m-%d", i)))
	}
	se, ok := sessionOf(n.store, "bound-sub")
	if !ok || se.Online || se.Queued != 10 || se.Dropped != 15 || se.ExpiresAt == nil {
		t.Fatalf("session = %+v (found %v), want offline, 10 queued, 15 dropped, an expiry", se, ok)
	}
	if got := testCounter(t, n.store.metrics.queueDropped); got != 15 {
		t.Errorf("tether_mqtt_queue_dropped_total = %v, want 15", got)
	}
	var got orderedPayloads
	storeClient(t, n.addr, "bound-sub", false, got.add)
	checkFor(t, 10*time.Second, func() error {
		if p := got.list(); len(p) < 10 {
			return fmt.Errorf("received %d of 10", len(p))
		}
		return nil
	})
	for i, p := range got.list() {
		if want := fmt.Sprintf("m-%d", i); p != want {
			t.Fatalf("message %d is %q, want %q (all: %v)", i, p, want, got.list())
		}
	}
	checkFor(t, 5*time.Second, func() error {
		if se, _ := sessionOf(n.store, "bound-sub"); !se.Online || se.Queued != 0 {
			return fmt.Errorf("session after drain: %+v", se)
		}
		return nil
	})
}

// An offline session's queue is longer than the inflight window at the
// defaults; it drains through the window, in order, and survives a
// restart, and an offline session's memory holds no messages.
func TestQueueBeyondWindow(t *testing.T) {
	dir := t.TempDir()
	n := startStoreNode(t, dir, nil)
	window := int(broker.DefaultOptions().MaxInflight)
	count := 3 * window
	sub := storeClient(t, n.addr, "win-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("win/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "win-sub")
	pub := storeClient(t, n.addr, "win-pub", true, nil)
	for i := range count {
		pub.Publish("win/x", 1, false, fmt.Sprintf("w-%d", i))
	}
	// Acknowledged after the 3,072 before it, each stored: 5–14 s under
	// -race at load average 14, so a bound well past that.
	testmqtt.WaitTokenFor(t, "last publish", pub.Publish("win/x", 1, false, fmt.Sprintf("w-%d", count)), time.Minute)
	count++
	v, _ := n.store.queues.Load("win-sub")
	q := v.(*queue)
	q.mu.Lock()
	held, queued := len(q.buf), q.count
	q.mu.Unlock()
	if held != 0 || queued != count {
		t.Fatalf("offline queue: %d in memory, %d queued; want 0 and %d", held, queued, count)
	}
	n.stop()

	n = startStoreNode(t, dir, nil)
	var got orderedPayloads
	storeClient(t, n.addr, "win-sub", false, got.add)
	checkFor(t, 20*time.Second, func() error {
		if p := got.list(); len(p) < count {
			return fmt.Errorf("received %d of %d", len(p), count)
		}
		return nil
	})
	for i, p := range got.list()[:count] {
		if want := fmt.Sprintf("w-%d", i); p != want {
			t.Fatalf("message %d is %q, want %q", i, p, want)
		}
	}
}

// PurgeSession removes a session with its queue from memory and disk.
func TestPurgeSession(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), nil)
	sub := storeClient(t, n.addr, "purge-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("purge/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "purge-sub")
	pub := storeClient(t, n.addr, "purge-pub", true, nil)
	for i := range 20 {
		waitToken(t, "publish", pub.Publish("purge/x", 1, false, fmt.Sprintf("p-%d", i)))
	}
	n.store.PurgeSession("purge-sub")
	if _, ok := sessionOf(n.store, "purge-sub"); ok {
		t.Fatal("session still listed after PurgeSession")
	}
	checkFor(t, 5*time.Second, func() error {
		var rows int
		err := n.db.R.QueryRow(`SELECT (SELECT COUNT(*) FROM mqtt_clients WHERE id = 'purge-sub')
			+ (SELECT COUNT(*) FROM mqtt_subscriptions WHERE client_id = 'purge-sub')
			+ (SELECT COUNT(*) FROM mqtt_queue WHERE client_id = 'purge-sub')`).Scan(&rows)
		if err != nil {
			return err
		}
		if rows != 0 {
			return fmt.Errorf("%d rows left on disk", rows)
		}
		return nil
	})
	if used, _ := n.store.QueueStoreUse(); used != 0 {
		t.Errorf("queue store still counts %d bytes", used)
	}
	// Publishing again queues nothing for it.
	waitToken(t, "publish", pub.Publish("purge/x", 1, false, "after"))
	if _, ok := n.store.queues.Load("purge-sub"); ok {
		t.Error("a queue came back for the purged session")
	}
}

// An MQTT 5 session's expiry is honoured up to mqtt.max_session_expiry
// (here 1 s although the client asks for an hour); the expired session's
// queue is removed from memory and disk.
func TestQueueGoesWithExpiredSession(t *testing.T) {
	n := startStoreNodeCfg(t, t.TempDir(), nil, func(c *broker.Options) { c.MaxSessionExpiry = time.Second })
	conn, err := net.DialTimeout("tcp", n.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	expiry := uint32(3600)
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: "exp-sub", KeepAlive: 30,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "exp/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_ = c.Disconnect(&paho5.Disconnect{})
	waitOffline(t, n.store, "exp-sub")
	pub := storeClient(t, n.addr, "exp-pub", true, nil)
	for i := range 5 {
		waitToken(t, "publish", pub.Publish("exp/x", 1, false, fmt.Sprintf("e-%d", i)))
	}
	if se, ok := sessionOf(n.store, "exp-sub"); !ok || se.Queued != 5 {
		t.Fatalf("session %+v (found %v), want 5 queued", se, ok)
	}
	checkFor(t, 10*time.Second, func() error {
		if _, ok := sessionOf(n.store, "exp-sub"); ok {
			return fmt.Errorf("session not expired yet")
		}
		var rows int
		if err := n.db.R.QueryRow(`SELECT COUNT(*) FROM mqtt_queue WHERE client_id = 'exp-sub'`).Scan(&rows); err != nil {
			return err
		}
		if rows != 0 {
			return fmt.Errorf("%d queued rows left", rows)
		}
		return nil
	})
	if used, _ := n.store.QueueStoreUse(); used != 0 {
		t.Errorf("queue store still counts %d bytes", used)
	}
}

// TestQueuedDeliveryLeavesClientPacketIDsFree: a session that returns to
// a queue gets its messages at once, while its client sends its first
// SUBSCRIBE with packet id 1, as mosquitto_sub does. The two directions'
// ids are independent [MQTT-2.3.1], but the engine keeps them in one
// store and refuses a SUBSCRIBE whose id a delivery is using (0x91): the
// store's deliveries count their ids down from 65535.
func TestQueuedDeliveryLeavesClientPacketIDsFree(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), nil)
	sub := storeClient(t, n.addr, "ids-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("ids/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "ids-sub")
	pub := storeClient(t, n.addr, "ids-pub", true, nil)
	for i := range 20 {
		waitToken(t, "publish", pub.Publish("ids/x", 1, false, fmt.Sprintf("m-%d", i)))
	}
	for round := range 5 {
		c, err := net.Dial("tcp", n.addr)
		if err != nil {
			t.Fatal(err)
		}
		// CONNECT (3.1.1, persistent, keep alive 30) and SUBSCRIBE id 1 in
		// one write: the SUBSCRIBE arrives while the queue drains.
		connect := []byte{0x10, 0, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x00, 0, 30, 0, 7, 'i', 'd', 's', '-', 's', 'u', 'b'}
		connect[1] = byte(len(connect) - 2)
		subscribe := []byte{0x82, 0, 0, 1, 0, 5, 'o', 't', 'h', '/', byte('a' + round), 1}
		subscribe[1] = byte(len(subscribe) - 2)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append(connect, subscribe...)); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		for {
			h, err := r.ReadByte()
			if err != nil {
				t.Fatalf("round %d: no SUBACK: %v", round, err)
			}
			l, _ := r.ReadByte() // the packets here are short
			body := make([]byte, l)
			if _, err := io.ReadFull(r, body); err != nil {
				t.Fatal(err)
			}
			if h>>4 == 3 { // a queued PUBLISH: acknowledge it
				c.Write([]byte{0x40, 2, body[2+int(body[0])<<8|int(body[1])], body[3+int(body[0])<<8|int(body[1])]})
				continue
			}
			if h == 0x90 {
				if body[0] != 0 || body[1] != 1 || body[2] != 1 {
					t.Fatalf("round %d: SUBACK % x, want packet id 1 granted QoS 1", round, body)
				}
				break
			}
		}
		c.Close()
		waitOffline(t, n.store, "ids-sub")
		waitToken(t, "publish", pub.Publish("ids/x", 1, false, "again"))
	}
}

// A session coming back to a queue of large messages reads them from
// disk a few MiB at a time (readAheadBytes), not 256 at once (256 MB of
// 1 MB messages, for each such session), and still gets them all, in
// order.
func TestQueueReadAheadBytes(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), nil)
	sub := storeClient(t, n.addr, "big-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("big/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "big-sub")
	pub := storeClient(t, n.addr, "big-pub", true, nil)
	const count, size = 20, 1_000_000
	for i := range count {
		p := make([]byte, size)
		copy(p, fmt.Sprintf("b-%d", i))
		testmqtt.WaitTokenFor(t, "publish", pub.Publish("big/x", 1, false, p), time.Minute)
	}
	items, err := n.store.readQueue("big-sub", 0, readAhead, readAheadBytes)
	if err != nil {
		t.Fatal(err)
	}
	var before int64
	for _, it := range items[:len(items)-1] {
		before += it.size
	}
	if len(items) >= count || before >= readAheadBytes {
		t.Errorf("read ahead %d of %d messages of %d bytes, %d bytes before the last; want at most %d bytes before the last",
			len(items), count, size, before, readAheadBytes)
	}
	var mu sync.Mutex
	var got []string // the messages' names, in order, each once
	storeClient(t, n.addr, "big-sub", false, func(m paho.Message) {
		p := m.Payload()
		if i := bytes.IndexByte(p, 0); i > 0 {
			p = p[:i]
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(got, string(p)) {
			got = append(got, string(p))
		}
	})
	list := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	checkFor(t, time.Minute, func() error {
		if p := list(); len(p) < count {
			return fmt.Errorf("received %d of %d", len(p), count)
		}
		return nil
	})
	for i, p := range list()[:count] {
		if want := fmt.Sprintf("b-%d", i); p != want {
			t.Fatalf("message %d is %q, want %q", i, p, want)
		}
	}
}
