package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestClusterPostgresSessionMoves: three real nodes on one PostgreSQL. A
// persistent QoS 1 subscriber on node A goes offline; messages published
// (and acknowledged) on node C are queued for it; A is killed with
// SIGKILL; another identity cannot take the client id's session on B;
// a surviving node takes the sessions A held and queues what is
// published meanwhile; the owner reconnects on B and gets the session
// back (session present) with every queued message, in order. Then the
// session moves again, from B (alive) to C, with what was queued
// meanwhile; a live connection moves from C to B; B stops cleanly and C
// takes its sessions; A, restarted, takes the session from C.
func TestClusterPostgresSessionMoves(t *testing.T) {
	pg := testpg.New(t)
	url := pg.NewDatabase(t)
	bin := tetherBinary(t)
	routes := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	nodes := make([]*tetherProc, 3)
	for i := range nodes {
		nodes[i] = newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+accessAdminPassword,
			fmt.Sprintf("TETHER_CLUSTER_NODE=ps%d", i+1), "TETHER_CLUSTER_LISTEN="+routes[i],
			"TETHER_CLUSTER_PEERS="+strings.Join(routes, ","), "TETHER_CLUSTER_SECRET="+testClusterSecret)
		nodes[i].args = []string{"--allow-anonymous=false", "--postgres", url}
		nodes[i].start(t)
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	admin := accessLogin(t, a, "admin", accessAdminPassword)
	ownerPw := accessUser(t, a, admin, "cs-owner", "admin")
	otherPw := accessUser(t, a, admin, "cs-other", "admin")
	db, err := database.OpenPostgres(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// queuedAs is how many messages whose payload starts with prefix the
	// database holds for the session; queued, how many in all.
	queuedAs := func(prefix string) int {
		var n int
		if err := db.R.QueryRow(`SELECT COUNT(*) FROM mqtt_queue WHERE client_id = ? AND convert_from(payload, 'UTF8') LIKE ?`,
			"cs-sub", prefix+"%").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	queued := func() int { return queuedAs("") }
	owner := mqOpts{id: "cs-sub", user: "cs-owner", pass: ownerPw, expiry: 3600}
	pub := mustMQ(t, c.mqtt, mqOpts{id: "cs-pub", user: "cs-owner", pass: ownerPw})

	// publishQueued publishes n messages on C while the session is
	// offline, each acknowledged, and checks that they are in its queue:
	// a PUBACK on C means the message is committed in the queue of the
	// session, whichever node holds it.
	publishQueued := func(prefix string, n int) {
		t.Helper()
		for i := range n {
			if code := pub.pub(t, fmt.Sprintf("cs/%s/%d", prefix, i), fmt.Sprintf("%s-%d", prefix, i)); code >= 0x80 {
				t.Fatalf("publish on C: PUBACK 0x%02x", code)
			}
		}
		if got := queuedAs(prefix + "-"); got != n {
			t.Fatalf("%d of %d acknowledged messages in the session's queue\nB:\n%s\nC:\n%s", got, n, b.log(), c.log())
		}
	}
	// receives checks that m gets prefix-0 ... prefix-(n-1), in order.
	receives := func(m *mq, prefix string, n int) {
		t.Helper()
		for i := range n {
			want := fmt.Sprintf("%s-%d", prefix, i)
			got := m.waitFor(t, func(m message) bool { return !strings.HasPrefix(m.payload, "warm-") }, nil)
			if got.payload != want {
				t.Fatalf("received %q on %s, want %q", got.payload, got.topic, want)
			}
		}
	}

	// crosses publishes on C until m (online) receives one, once its
	// subscription has crossed the bus (those published before are
	// dropped on C), then waits until m has the last one and has
	// acknowledged everything, so that nothing is left in its queue.
	warm := 0
	crosses := func(m *mq, from *tetherProc) {
		t.Helper()
		first := warm
		last := ""
		deadline := time.Now().Add(20 * time.Second)
		for {
			if last == "" {
				pub.pub(t, "cs/warm", fmt.Sprintf("warm-%d", warm))
				warm++
			}
			select {
			case got := <-m.box:
				last = got.payload
			case <-time.After(100 * time.Millisecond):
			}
			if last == fmt.Sprintf("warm-%d", warm-1) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("messages %d to %d: none crossed from C\n%s", first, warm-1, from.log())
			}
		}
		checkFor(t, 10*time.Second, func() error {
			if got := queued(); got != 0 {
				return fmt.Errorf("%d warm-up messages still queued", got)
			}
			return nil
		})
	}

	// The subscriber on A; its subscription crosses to C, then it goes
	// offline.
	sub := mustMQ(t, a.mqtt, owner)
	sub.sub(t, "cs/#")
	crosses(sub, a)
	sub.close()
	publishQueued("dead", 20)
	a.kill(t)

	// Another identity may not have the session, on any node.
	if m, code := dialMQ(t, b.mqtt, mqOpts{id: "cs-sub", user: "cs-other", pass: otherPw, expiry: 3600}); m != nil || code != 0x85 {
		t.Fatalf("another identity took the session on B: CONNACK 0x%02x", code)
	}
	// probe publishes on C until a message reaches the session's queue
	// (which holds base messages): its holder's subscription has
	// crossed the bus.
	probe := func(base int) {
		t.Helper()
		checkFor(t, 20*time.Second, func() error {
			pub.pub(t, "cs/warm", fmt.Sprintf("warm-%d", warm))
			warm++
			if got := queued(); got <= base {
				return fmt.Errorf("%d messages queued: the holder's subscription has not reached C yet", got)
			}
			return nil
		})
	}
	// holder waits until the session's row names a node other than
	// those given.
	holder := func(not ...string) {
		t.Helper()
		checkFor(t, 30*time.Second, func() error {
			var node string
			if err := db.R.QueryRow(`SELECT node FROM mqtt_clients WHERE id = ?`, "cs-sub").Scan(&node); err != nil {
				return err
			}
			for _, n := range not {
				if node == n {
					return fmt.Errorf("the session is still %s's", n)
				}
			}
			return nil
		})
	}

	// The survivors take the sessions A held (one of them does), and
	// serve their subscriptions: what is published now is queued too.
	holder("ps1")
	probe(20)
	publishQueued("orphan", 10)

	// Its owner gets it back on B, with every queued message.
	sub = mustMQ(t, b.mqtt, owner)
	if !sub.present {
		t.Fatalf("session not present on B\nB:\n%s", b.log())
	}
	receives(sub, "dead", 20)
	receives(sub, "orphan", 10)
	checkFor(t, 10*time.Second, func() error {
		if got := queued(); got != 0 {
			return fmt.Errorf("%d messages still queued after delivery", got)
		}
		return nil
	})

	// B now holds the session: its subscription reaches C again; the
	// session moves from B, alive, to C.
	crosses(sub, b)
	sub.close()
	publishQueued("live", 10)
	sub = mustMQ(t, c.mqtt, owner)
	if !sub.present {
		t.Fatalf("session not present on C\nC:\n%s", c.log())
	}
	receives(sub, "live", 10)

	// A live connection moves too: connecting on B takes the session
	// from C, which disconnects its client.
	moved := mustMQ(t, b.mqtt, owner)
	if !moved.present {
		t.Fatalf("session not present on B after a live move\nB:\n%s", b.log())
	}
	select {
	case <-sub.c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection on C was not ended by the move to B")
	}
	crosses(moved, b)
	if m, code := dialMQ(t, b.mqtt, mqOpts{id: "cs-sub", user: "cs-other", pass: otherPw, expiry: 3600}); m != nil || code != 0x85 {
		t.Fatalf("another identity took the session on B while B holds it: CONNACK 0x%02x", code)
	}

	// A node that stops cleanly says goodbye: the others take its
	// sessions at once. A, restarted, takes the session from them when
	// the client connects to it.
	moved.close()
	b.stop(t)
	holder("ps1", "ps2")
	a.start(t)
	probe(0)
	publishQueued("bye", 5)
	sub = mustMQ(t, a.mqtt, owner)
	if !sub.present {
		t.Fatalf("session not present on A after its restart\nA:\n%s", a.log())
	}
	receives(sub, "bye", 5)
}

// TestClusterSubscriptionLevels: two real nodes on one PostgreSQL, at the
// defaults (mqtt.max_subscription_levels_per_client 8,000). A viewer's
// persistent session on A holds the 533 filters of 16 levels (none
// shared past devices/) that fit; when the viewer reconnects on B, the
// session moves there with its filters, which still count: a new filter
// is refused with 0x97, a held one granted, and an UNSUBSCRIBE frees a
// filter's levels for another.
func TestClusterSubscriptionLevels(t *testing.T) {
	pg := testpg.New(t)
	url := pg.NewDatabase(t)
	bin := tetherBinary(t)
	routes := []string{freeAddr(t), freeAddr(t)}
	nodes := make([]*tetherProc, 2)
	for i := range nodes {
		nodes[i] = newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+accessAdminPassword,
			fmt.Sprintf("TETHER_CLUSTER_NODE=sl%d", i+1), "TETHER_CLUSTER_LISTEN="+routes[i],
			"TETHER_CLUSTER_PEERS="+strings.Join(routes, ","), "TETHER_CLUSTER_SECRET="+testClusterSecret)
		nodes[i].args = []string{"--allow-anonymous=false", "--postgres", url}
		nodes[i].start(t)
	}
	a, b := nodes[0], nodes[1]
	admin := accessLogin(t, a, "admin", accessAdminPassword)
	pw := accessUser(t, a, admin, "sl-viewer", "viewer")
	o := mqOpts{id: "sl-sub", user: "sl-viewer", pass: pw, expiry: 3600}
	filter := func(i int) string { return fmt.Sprintf("devices/d%04d/", i) + strings.Repeat("x/", 13) + "y" } // 16 levels
	const fit = 533                                                                                           // 16 + 532 × 15 = 7,996
	m := mustMQ(t, a.mqtt, o)
	for i := range fit + 1 {
		want := byte(1)
		if i == fit {
			want = 0x97
		}
		if code := m.sub(t, filter(i)); code != want {
			t.Fatalf("on A, filter %d: SUBACK 0x%02x, want 0x%02x", i, code, want)
		}
	}
	m.close()

	m = mustMQ(t, b.mqtt, o)
	if !m.present {
		t.Fatalf("no session on B\nB:\n%s", b.log())
	}
	if code := m.sub(t, filter(fit)); code != 0x97 {
		t.Fatalf("on B, a new filter: SUBACK 0x%02x, want 0x97", code)
	}
	if code := m.sub(t, filter(3)); code != 1 {
		t.Fatalf("on B, a held filter: SUBACK 0x%02x, want 1", code)
	}
	m.unsub(t, filter(0))
	if code := m.sub(t, filter(fit)); code != 1 {
		t.Fatalf("on B after an UNSUBSCRIBE: SUBACK 0x%02x, want 1", code)
	}
	if code := m.sub(t, filter(fit+1)); code != 0x97 {
		t.Fatalf("on B at the bound again: SUBACK 0x%02x, want 0x97", code)
	}
}
