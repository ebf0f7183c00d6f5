package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// retainedOn returns the payload retained on topic at n, and whether one is.
func retainedOn(n *testNode, topic string) (string, bool) {
	if pk, ok := n.srv.Topics.Retained.Get(topic); ok {
		return string(pk.Payload), true
	}
	return "", false
}

// TestRetainedAfterPartition: two nodes stop hearing each other (n2's
// subscriptions to the bus are cut: it hears nothing, and its messages
// reach no one that listens for them). Meanwhile each side's clients
// publish and delete retained messages. When the two hear each other
// again, each node holds the other's newer messages and has dropped
// those deleted on the other side, and a message deleted on one side
// does not come back from the other.
func TestRetainedAfterPartition(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	pubA := testmqtt.Client(t, a.addr, "pub-a", true, true, nil)
	pubB := testmqtt.Client(t, b.addr, "pub-b", true, true, nil)
	testmqtt.WaitToken(t, "publish", pubA.Publish("keep/a", 1, true, "1"))
	testmqtt.WaitToken(t, "publish", pubB.Publish("gone/b", 1, true, "x"))
	testmqtt.WaitToken(t, "publish", pubB.Publish("gone/c", 1, true, "y"))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		for _, n := range nodes {
			for _, topic := range []string{"keep/a", "gone/b", "gone/c"} {
				if _, ok := retainedOn(n, topic); !ok {
					return fmt.Errorf("%s does not retain %s yet", n.node.Name(), topic)
				}
			}
		}
		return nil
	})

	// Each has made its copy of what the other published since its start.
	testmqtt.CheckFor(t, 15*time.Second, func() error {
		for _, n := range nodes {
			n.node.sync.mu.Lock()
			done := len(n.node.sync.copied) == 1
			n.node.sync.mu.Unlock()
			if !done {
				return fmt.Errorf("%s has not copied the other's retained messages yet", n.node.Name())
			}
		}
		return nil
	})

	// The partition: n2 hears nothing, and its messages are lost.
	b.node.unsubscribe()
	testmqtt.CheckFor(t, 15*time.Second, func() error {
		if got := len(b.node.Nodes()); got != 1 {
			return fmt.Errorf("n2 still hears %d nodes", got)
		}
		if p := (*a.node.peers.Load())["n2"]; p != nil && p.hearsUs {
			return fmt.Errorf("n1 is still heard by n2")
		}
		return nil
	})
	// What follows is newer, to the second (the unit of a message's
	// publish time), than what was retained before.
	before, _ := b.srv.Topics.Retained.Get("gone/c")
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if time.Now().Unix() <= before.Created {
			return fmt.Errorf("still the second of the messages before")
		}
		return nil
	})
	testmqtt.WaitToken(t, "publish", pubA.Publish("new/a", 1, true, "on n1"))
	testmqtt.WaitToken(t, "publish", pubA.Publish("gone/b", 1, true, "")) // deleted on n1
	testmqtt.WaitToken(t, "publish", pubB.Publish("new/b", 1, true, "on n2"))
	testmqtt.WaitToken(t, "publish", pubB.Publish("keep/a", 1, true, "2")) // newer on n2
	testmqtt.WaitToken(t, "publish", pubB.Publish("gone/c", 1, true, ""))  // deleted on n2
	if _, ok := retainedOn(b, "new/a"); ok {
		t.Fatal("the partition let n1's message through")
	}

	b.node.subscribe() // healed
	want := map[string]string{"keep/a": "2", "new/a": "on n1", "new/b": "on n2"}
	testmqtt.CheckFor(t, 20*time.Second, func() error {
		for _, n := range nodes {
			for topic, payload := range want {
				if got, ok := retainedOn(n, topic); got != payload {
					return fmt.Errorf("%s retains %s = %q (%v), want %q", n.node.Name(), topic, got, ok, payload)
				}
			}
			for _, topic := range []string{"gone/b", "gone/c"} {
				if got, ok := retainedOn(n, topic); ok {
					return fmt.Errorf("%s still retains %s = %q, deleted during the partition", n.node.Name(), topic, got)
				}
			}
		}
		return nil
	})
}

// TestTombsBound: the deletions a node keeps are bounded, the oldest go
// first, a topic retained again is no longer deleted, and only those made
// on this node are sent to others (those from the bus still keep a copy
// from bringing a message back here).
func TestTombsBound(t *testing.T) {
	var ts tombs
	ts.note("a", true, true, 1)
	ts.note("b", true, true, 2)
	ts.note("a", true, true, 3)  // deleted again, later
	ts.note("b", false, true, 4) // retained again
	ts.note("c", true, false, 5) // deleted on another node
	if at, ok := ts.deletedAt("a"); !ok || at != 3 {
		t.Fatalf("a deleted at %d (%v), want 3", at, ok)
	}
	if _, ok := ts.deletedAt("b"); ok {
		t.Fatal("b retained again is still deleted")
	}
	if at, ok := ts.deletedAt("c"); !ok || at != 5 {
		t.Fatalf("c deleted at %d (%v), want 5", at, ok)
	}
	if l := ts.local(); len(l) != 1 || l[0] != (deletion{"a", 3}) {
		t.Fatalf("local %v", l)
	}
	for i := 0; i < 3*maxTombs; i++ {
		ts.note(fmt.Sprintf("t/%d", i), true, true, int64(10+i))
	}
	l := ts.local()
	if len(l) != maxTombs || l[0].topic != fmt.Sprintf("t/%d", 2*maxTombs) || len(ts.order) > 2*maxTombs+1 {
		t.Fatalf("%d kept, first %v, %d in order", len(l), l[0], len(ts.order))
	}
	for _, topic := range []string{"a", "c"} {
		if _, ok := ts.deletedAt(topic); ok {
			t.Fatalf("the deletion of %s was kept past the bound", topic)
		}
	}
}

// TestRetainedCopyAfterDeletion: a copy of another node's retained
// messages taken before a deletion there and arriving here after the
// deletion does not bring the deleted message back.
func TestRetainedCopyAfterDeletion(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	pub := testmqtt.Client(t, a.addr, "pub", true, true, nil)
	testmqtt.WaitToken(t, "publish", pub.Publish("state/x", 1, true, "on"))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if _, ok := retainedOn(b, "state/x"); !ok {
			return fmt.Errorf("not retained on n2 yet")
		}
		return nil
	})
	old, _ := a.srv.Topics.Retained.Get("state/x")
	testmqtt.WaitToken(t, "publish", pub.Publish("state/x", 1, true, ""))
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if _, ok := retainedOn(b, "state/x"); ok {
			return fmt.Errorf("still retained on n2")
		}
		return nil
	})
	// n1 answers as it would have before the deletion.
	a.srv.Topics.RetainMessage(old)
	if !b.node.syncRetained("n1", false) {
		t.Fatal("copy from n1 failed")
	}
	if got, ok := retainedOn(b, "state/x"); ok {
		t.Fatalf("the copy brought back %q, deleted before it arrived", got)
	}
}
