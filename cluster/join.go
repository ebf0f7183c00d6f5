package cluster

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// A node that starts is not ready (/readyz) until it has joined: it hears
// the nodes that are up, has their filters (so what its clients publish
// reaches their subscribers), is heard by them (so what theirs publish
// reaches its subscribers) and holds a copy of their retained messages
// (so its subscribers get them). Before that, a load balancer that sent
// it clients would lose their messages to the other nodes' subscribers.
const (
	// joinSettle is the least a node waits after it starts: long
	// enough for the routes to the nodes that are up to form (NATS dials
	// a route at start and again every second) and for each of them to
	// beat. A node that then hears no other and is routed to none (the
	// first of a cluster, or the last one standing) is ready.
	joinSettle = 2 * beatEvery
	// joinMax is the most: a node says it is ready then, whatever it
	// still waits for (a node routed to but silent), and logs what.
	joinMax = 15 * time.Second
)

// joinState is this node's way into the cluster, from its start or
// from its bus connection's return.
type joinState struct {
	max time.Duration

	mu    sync.Mutex
	start time.Time // Attach or the bus's return; zero before
	done  bool      // joined: readiness no longer waits (until the bus is lost)
	// reconnects is the bus connection's reconnection count when the
	// way in last started: one more and it starts again.
	reconnects uint64
}

// began starts the way in (Attach).
func (j *joinState) began(now time.Time) {
	j.mu.Lock()
	j.start = now
	j.mu.Unlock()
}

// joining returns what this node still waits for before it is ready, ""
// once it has joined, then until its bus connection is lost (a node lost
// later does not make this one unready). The way in starts again when
// the bus connection has come back since it last started: the others
// hear this node again (and it them) only as each beats. That is read
// from the connection's reconnection count, not set from its reconnect
// callback: the connection counts as connected before that runs.
func (n *Node) joining(now time.Time) string {
	j := &n.join
	j.mu.Lock()
	defer j.mu.Unlock()
	if r := n.nc.Stats().Reconnects; r != j.reconnects {
		j.reconnects, j.start, j.done = r, now, false
	}
	if j.done {
		return ""
	}
	if j.start.IsZero() {
		return "the node to start"
	}
	since := now.Sub(j.start)
	if since < joinSettle {
		return "the other nodes' beats"
	}
	wait := n.joinWait(j.start)
	if wait != "" && since < j.max {
		return wait
	}
	j.done = true
	if wait != "" {
		n.log.Warn("ready without having joined the cluster fully", "after", j.max, "waiting for", wait)
	} else {
		n.log.Info("joined the cluster", "nodes", len(*n.peers.Load())+1, "after", since.Round(time.Millisecond))
	}
	return ""
}

// joinWait says what this node waits for to have joined since start, ""
// when nothing.
func (n *Node) joinWait(start time.Time) string {
	peers := *n.peers.Load()
	if n.ns != nil {
		if routed := n.routedServers(); routed > len(peers) {
			return fmt.Sprintf("%d of the %d nodes it is routed to", routed-len(peers), routed)
		}
	}
	names := make([]string, 0, len(peers))
	for name := range peers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := peers[name]
		if p.seen.Before(start) {
			return "node " + name + " to beat again" // since the bus came back
		}
		if p.in == nil {
			return "the subscriptions of node " + name
		}
		if !p.hearsUs {
			return "node " + name + " to hear this node"
		}
	}
	if len(peers) > 0 {
		n.sync.mu.Lock()
		full := n.sync.full
		n.sync.mu.Unlock()
		if !full {
			return "a copy of the retained messages"
		}
	}
	return ""
}

// routedServers counts the NATS servers the embedded one has a route to
// (each has several connections: route pooling).
func (n *Node) routedServers() int {
	rz, err := n.ns.Routez(nil)
	if err != nil {
		return 0
	}
	ids := map[string]bool{}
	for _, r := range rz.Routes {
		if r.RemoteID != "" {
			ids[r.RemoteID] = true
		}
	}
	return len(ids)
}

// hearing lists the nodes this node hears, for its beat.
func (n *Node) hearing() []string {
	peers := *n.peers.Load()
	out := make([]string, 0, len(peers))
	for name := range peers {
		out = append(out, name)
	}
	return out
}
