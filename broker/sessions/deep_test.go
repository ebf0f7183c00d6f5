package sessions

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// levelsOf is a topic of n levels under prefix.
func levelsOf(prefix string, n int) string {
	return prefix + strings.Repeat("/l", n-strings.Count(prefix, "/")-1)
}

// Subscriptions and retained messages stored with more levels than
// mqtt.max_topic_levels (32), as before the bound existed, are not loaded
// at start: they are deleted from the store, counted and logged; the
// others are loaded. A deep retained message could not be cleared over
// MQTT otherwise (a PUBLISH to its topic is refused).
func TestDeepRecordsRemovedAtLoad(t *testing.T) {
	dir := t.TempDir()
	opts := &Options{MaxTopicLevels: 32}
	n := startStoreNode(t, dir, opts)
	keeper := storeClient(t, n.addr, "keeper", false, nil)
	waitToken(t, "subscribe", keeper.Subscribe("keep/a/b", 1, nil))
	keeper.Disconnect(100)
	waitOffline(t, n.store, "keeper")
	pub := storeClient(t, n.addr, "pub", true, nil)
	waitToken(t, "publish retained", pub.Publish("keep/r", 1, true, "kept"))
	pub.Disconnect(100)
	n.stop()

	// Written with the store's own code while the server is stopped, as
	// a Tether without the bound stored them.
	deepSub := levelsOf("deep/s", 40)
	deepShared := "$share/g/" + levelsOf("deep/shared", 33) // its filter has 33
	okShared := "$share/g/" + levelsOf("ok/shared", 32)     // 34 with $share/g, its filter 32
	deepTopic := levelsOf("deep/r", 33)
	st, err := Open(dir, &Options{Logger: storeLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Init(nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{deepSub, deepShared, okShared} {
		st.w.enqueue(newOp(opSubPut, "keeper", f, encodeSubscription("keeper", packets.Subscription{Filter: f, Qos: 1}, 1)))
	}
	st.PutRetained(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName: deepTopic, Payload: []byte("deep"), Origin: "old", Created: time.Now().Unix()})
	<-st.Barrier()
	st.Close()

	n = startStoreNode(t, dir, opts)
	<-n.store.Barrier() // the deletions queued at load are committed
	for what, want := range map[string]float64{deepSubscription: 2, deepRetained: 1} {
		if got := testCounter(t, n.store.metrics.deep.WithLabelValues(what)); got != want {
			t.Errorf("tether_store_deep_removed_total{what=%q} = %v, want %v", what, got, want)
		}
	}
	var filters []string
	rows, err := n.db.R.Query(`SELECT filter FROM mqtt_subscriptions WHERE client_id = 'keeper' ORDER BY filter`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			t.Fatal(err)
		}
		filters = append(filters, f)
	}
	rows.Close()
	if want := []string{okShared, "keep/a/b"}; !slices.Equal(filters, want) {
		t.Fatalf("stored subscriptions %q, want %q", filters, want)
	}
	var retained []string
	rows, err = n.db.R.Query(`SELECT topic FROM mqtt_retained ORDER BY topic`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var topic string
		if err := rows.Scan(&topic); err != nil {
			t.Fatal(err)
		}
		retained = append(retained, topic)
	}
	rows.Close()
	if !slices.Equal(retained, []string{"keep/r"}) {
		t.Fatalf("stored retained messages %q, want keep/r", retained)
	}
	cl, ok := n.b.Server.Clients.Get("keeper")
	if !ok {
		t.Fatal("session keeper not restored")
	}
	held := slices.Sorted(func(yield func(string) bool) {
		for f := range cl.State.Subscriptions.GetAll() {
			if !yield(f) {
				return
			}
		}
	})
	if want := []string{okShared, "keep/a/b"}; !slices.Equal(held, want) {
		t.Fatalf("engine holds %q for keeper, want %q", held, want)
	}
	if _, ok := n.b.Server.Topics.Retained.Get(deepTopic); ok {
		t.Fatal("the deep retained message was loaded into the engine")
	}

	// The rest works: the retained message is delivered, the session's
	// subscription receives.
	var ret orderedPayloads
	var got received
	late := storeClient(t, n.addr, "late", true, ret.add)
	waitToken(t, "subscribe", late.Subscribe("#", 0, nil))
	storeClient(t, n.addr, "keeper", false, got.add)
	pub = storeClient(t, n.addr, "pub", true, nil)
	waitToken(t, "publish", pub.Publish("keep/a/b", 1, false, "live"))
	checkFor(t, 5*time.Second, func() error {
		if !slices.Contains(ret.list(), "live") || got.distinct() != 1 {
			return fmt.Errorf("late has %q, keeper %d messages", ret.list(), got.distinct())
		}
		return nil
	})
	if p := ret.list(); len(p) != 2 || !slices.Contains(p, "kept") {
		t.Fatalf("a subscriber to # got %q, want the retained kept and live", p)
	}
}
