package sessions

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/devices"
)

// storeNode is a broker with a session store in dir.
type storeNode struct {
	b     *broker.Broker
	store *Store
	db    *devices.DB
	addr  string
}

func startStoreNode(t testing.TB, dir string, opts *Options) *storeNode {
	t.Helper()
	return startStoreNodeCfg(t, dir, opts, nil)
}

// startStoreNodeCfg starts a node at the default settings, changed by
// edit if not nil.
func startStoreNodeCfg(t testing.TB, dir string, opts *Options, edit func(*broker.Options)) *storeNode {
	t.Helper()
	bo := broker.DefaultOptions()
	bo.TCPAddr = "127.0.0.1:0"
	bo.AllowAnonymous = true
	if edit != nil {
		edit(&bo)
	}
	o := Options{}
	if opts != nil {
		o = *opts
	}
	o.Logger = storeLogger()
	st, err := Open(dir, &o)
	if err != nil {
		t.Fatal(err)
	}
	bo.Logger, bo.Hooks = storeLogger(), []mqtt.Hook{st}
	b, err := broker.New(bo)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	st.Attach(b.Server)
	if err := b.Start(); err != nil {
		st.Close()
		t.Fatal(err)
	}
	n := &storeNode{b: b, store: st, db: st.db, addr: b.TCP.Address()}
	t.Cleanup(n.stop)
	return n
}

// stop shuts the broker down (which stops and flushes the store), then
// closes the database. Idempotent.
func (n *storeNode) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.b.Shutdown(ctx)
	_ = n.store.Close()
}

func TestStorageSessionAndRetainedSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	n := startStoreNode(t, dir, nil)
	sub := storeClient(t, n.addr, "sub-persistent", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("store/t/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "sub-persistent")

	pub := storeClient(t, n.addr, "pub", true, nil)
	const count = 500
	for i := range count {
		waitToken(t, "publish", pub.Publish("store/t/x", 1, false, fmt.Sprintf("m%d", i)))
	}
	waitToken(t, "publish retained", pub.Publish("store/r", 1, true, "kept"))
	pub.Disconnect(100)
	n.stop()

	n2 := startStoreNode(t, dir, nil)
	var got received
	storeClient(t, n2.addr, "sub-persistent", false, got.add)
	checkFor(t, 10*time.Second, func() error {
		if d := got.distinct(); d < count {
			return fmt.Errorf("subscriber has %d of %d messages", d, count)
		}
		return nil
	})
	var ret received
	c := storeClient(t, n2.addr, "late", true, ret.add)
	waitToken(t, "subscribe retained", c.Subscribe("store/r", 1, nil))
	checkFor(t, 5*time.Second, func() error {
		if ret.distinct() != 1 {
			return fmt.Errorf("retained message not delivered")
		}
		return nil
	})
}

// After each PUBACK the publisher receives, the message is on disk for
// the offline persistent subscriber: in its queue or as an inflight row.
func TestStorageAckedMeansOnDisk(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), nil)
	sub := storeClient(t, n.addr, "sub-off", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("ack/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "sub-off")
	pub := storeClient(t, n.addr, "pub-ack", true, nil)
	for i := range 200 {
		p := fmt.Sprintf("a%d", i)
		waitToken(t, "publish", pub.Publish("ack/x", 1, false, p))
		var found int
		err := n.db.R.QueryRow(`SELECT COUNT(*) FROM (
			SELECT payload FROM mqtt_inflight WHERE client_id = 'sub-off' AND payload = ?1
			UNION ALL SELECT payload FROM mqtt_queue WHERE client_id = 'sub-off' AND payload = ?1)`, []byte(p)).Scan(&found)
		if err != nil {
			t.Fatal(err)
		}
		if found == 0 {
			t.Fatalf("message %s acknowledged but not on disk", p)
		}
	}
}

// Many publishers at once share transactions.
func TestStorageGroupCommit(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), nil)
	sub := storeClient(t, n.addr, "sub-gc", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("gc/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "sub-gc")
	const pubs, each = 8, 100
	var wg sync.WaitGroup
	for p := range pubs {
		c := storeClient(t, n.addr, fmt.Sprintf("gc-pub-%d", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks := make([]paho.Token, 0, each)
			for i := range each {
				toks = append(toks, c.Publish("gc/x", 1, false, fmt.Sprintf("%d-%d", p, i)))
			}
			for _, tk := range toks {
				tk.WaitTimeout(10 * time.Second)
			}
		}()
	}
	wg.Wait()
	commits := testCounter(t, n.store.metrics.commits)
	if commits >= pubs*each {
		t.Errorf("%v commits for %d messages: no grouping", commits, pubs*each)
	}
	t.Logf("%d messages in %v commits", pubs*each, commits)
}

// When SQLite cannot write (here: the database may not grow, as on a full
// disk), routing goes on, Healthy reports the fault, and the store
// catches up once the fault clears.
func TestStorageDiskFullRecovers(t *testing.T) {
	n := startStoreNode(t, t.TempDir(), &Options{MaxQueueBytes: 256 << 10})
	var got received
	sub := storeClient(t, n.addr, "sub-full", false, got.add)
	waitToken(t, "subscribe", sub.Subscribe("full/#", 1, nil))
	checkFor(t, 5*time.Second, func() error { return n.store.Healthy() })

	var pages int
	if err := n.db.W.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := n.db.W.Exec(fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
		t.Fatal(err)
	}
	pub := storeClient(t, n.addr, "pub-full", true, nil)
	big := strings.Repeat("x", 8<<10)
	const count = 200 // 1.6 MB: more than the queue may hold
	for i := range count {
		waitToken(t, "publish", pub.Publish("full/x", 1, false, fmt.Sprintf("%d-%s", i, big)))
	}
	checkFor(t, 5*time.Second, func() error {
		if n.store.Healthy() == nil {
			return fmt.Errorf("store reports healthy on a full database")
		}
		return nil
	})
	checkFor(t, 10*time.Second, func() error {
		if d := got.distinct(); d < count {
			return fmt.Errorf("routing: subscriber has %d of %d", d, count)
		}
		return nil
	})
	if _, err := n.db.W.Exec(`PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 15*time.Second, func() error { return n.store.Healthy() })
	// The store holds the session again (rewritten from memory).
	checkFor(t, 5*time.Second, func() error {
		var subs int
		if err := n.db.R.QueryRow(`SELECT COUNT(*) FROM mqtt_subscriptions WHERE client_id = 'sub-full'`).Scan(&subs); err != nil {
			return err
		}
		if subs != 1 {
			return fmt.Errorf("%d subscriptions stored after recovery", subs)
		}
		return nil
	})
	if testCounter(t, n.store.metrics.unsafeAcks) == 0 {
		t.Error("acknowledgements without durability were not counted")
	}
}

// BenchmarkStorageQoS1 publishes QoS 1 messages from 8 publishers to an
// offline persistent subscriber through an in-process broker with the
// store: b.N acknowledged messages.
func BenchmarkStorageQoS1(b *testing.B) {
	dir := b.TempDir()
	bo := broker.DefaultOptions()
	bo.TCPAddr = "127.0.0.1:0"
	bo.AllowAnonymous = true
	st, err := Open(dir, &Options{Logger: storeLogger()})
	if err != nil {
		b.Fatal(err)
	}
	bo.Logger, bo.Hooks = storeLogger(), []mqtt.Hook{st}
	br, err := broker.New(bo)
	if err != nil {
		b.Fatal(err)
	}
	st.Attach(br.Server)
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { br.Shutdown(context.Background()); st.Close() }()
	addr := br.TCP.Address()
	connect := func(id string, clean bool) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
			SetCleanSession(clean).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		return c
	}
	sub := connect("bench-sub", false)
	sub.Subscribe("bench/#", 1, nil).Wait()
	sub.Disconnect(50)
	const pubs = 8
	var wg sync.WaitGroup
	b.ResetTimer()
	for p := range pubs {
		c := connect(fmt.Sprint("bench-pub-", p), true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var toks []paho.Token
			for i := p; i < b.N; i += pubs {
				toks = append(toks, c.Publish("bench/x", 1, false, "0123456789012345678901234567890123456789"))
				if len(toks) >= 64 {
					toks[0].Wait()
					toks = toks[1:]
				}
			}
			for _, tk := range toks {
				tk.Wait()
			}
			c.Disconnect(0)
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
	b.ReportMetric(float64(b.N)/max(testCounterB(st.metrics.commits), 1), "msg/commit")
}

func testCounterB(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// The index of persistent subscriptions follows the engine: clean
// sessions never enter it (so their QoS 1 publishes skip the store), a
// persistent session's subscriptions enter on SUBSCRIBE and on loading,
// and leave on UNSUBSCRIBE and when a clean connection ends the session.
func TestStoragePersistIndex(t *testing.T) {
	dir := t.TempDir()
	n := startStoreNode(t, dir, nil)
	x := n.store.persist
	want := func(count int64, topic string, match bool) {
		t.Helper()
		checkFor(t, 5*time.Second, func() error {
			if got := x.n.Load(); got != count {
				return fmt.Errorf("index holds %d, want %d", got, count)
			}
			if got := x.matches(topic); got != match {
				return fmt.Errorf("matches(%q) = %v, want %v", topic, got, match)
			}
			return nil
		})
	}
	clean := storeClient(t, n.addr, "idx-clean", true, nil)
	waitToken(t, "subscribe", clean.Subscribe("#", 1, nil))
	want(0, "idx/a", false)

	p := storeClient(t, n.addr, "idx-p", false, nil)
	waitToken(t, "subscribe", p.Subscribe("idx/+", 1, nil))
	want(1, "idx/a", true)
	if x.matches("other/a") {
		t.Error("matches(other/a) with only idx/+ indexed")
	}
	waitToken(t, "unsubscribe", p.Unsubscribe("idx/+"))
	want(0, "idx/a", false)
	waitToken(t, "subscribe", p.Subscribe("idx/+", 1, nil))
	p.Disconnect(100)
	want(1, "idx/a", true) // the offline session keeps it

	n.stop()
	n = startStoreNode(t, dir, nil)
	x = n.store.persist
	want(1, "idx/a", true) // loaded from the store

	// A clean connection under the same id ends the session.
	storeClient(t, n.addr, "idx-p", true, nil)
	want(0, "idx/a", false)
}
