package cluster

import (
	"context"
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/nats-io/nats.go"
)

// Subjects. A node's name is part of the ones addressed to it; MQTT
// topics never are (they travel inside the message).
const (
	subjMsg      = "tether.msg."     // + node: messages for that node
	subjBeat     = "tether.beat"     // every node, every second
	subjInterest = "tether.interest" // a node's filters
	subjWant     = "tether.want."    // + node: send your filters again
	subjBye      = "tether.bye"      // a node leaves
	subjClaim    = "tether.claim"    // a client id connects (request)
)

type beat struct {
	Node    string  `json:"node"`
	Inst    string  `json:"inst"`
	Version uint64  `json:"version"` // of its filters
	Clients int64   `json:"clients"`
	Rate    float64 `json:"rate"`
	// Hears names the nodes it hears (join.go); absent from a node
	// older than it.
	Hears []string `json:"hears"`
}

type announcement struct {
	Node    string   `json:"node"`
	Inst    string   `json:"inst"`
	Version uint64   `json:"version"`
	Filters []string `json:"filters"`
	// Durable are the filters of its persistent sessions (durable.go).
	Durable []string `json:"durable,omitempty"`
}

type bye struct {
	Node string `json:"node"`
	Inst string `json:"inst"`
}

func (n *Node) publishJSON(subject string, v any) {
	b, err := json.Marshal(v)
	if err == nil {
		err = n.nc.Publish(subject, b)
	}
	if err != nil {
		n.log.Debug("cluster announcement not sent", "subject", subject, "error", err)
	}
}

// touch asks the announcer to look at this node's subscriptions again.
func (n *Node) touch() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// announcer recomputes this node's filters whenever a subscription
// changes and announces them when they differ.
func (n *Node) announcer() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.changed:
			n.announce(false)
		}
	}
}

// announce publishes this node's filters: when they changed, or always
// when force (another node asked).
func (n *Node) announce(force bool) {
	srv := n.srv.Load()
	if srv == nil {
		return
	}
	set, dset := map[string]struct{}{}, map[string]struct{}{}
	var persistent func(*mqtt.Client) bool
	if d := n.durable.Load(); d != nil {
		persistent = d.Persistent
	}
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		p := persistent != nil && persistent(cl)
		for f := range cl.State.Subscriptions.GetAll() {
			set[f] = struct{}{}
			if p {
				dset[f] = struct{}{}
			}
		}
	}
	filters, durable := sortedSet(set), sortedSet(dset)
	n.mu.Lock()
	cur := n.local.Load()
	if !sameFilters(cur.filters, filters) || !sameFilters(n.localDurable, durable) {
		n.version++
		cur = newInterest(n.version, filters)
		n.local.Store(cur)
		n.localDurable = durable
	} else if !force {
		n.mu.Unlock()
		return
	}
	durable = n.localDurable
	n.mu.Unlock()
	n.publishJSON(subjInterest, announcement{Node: n.name, Inst: n.inst, Version: cur.version, Filters: cur.filters, Durable: durable})
}

// reintroduce tells the others about this node now (start, reconnect).
func (n *Node) reintroduce() {
	if n.srv.Load() == nil {
		return
	}
	n.sendBeat()
	n.announce(true)
}

// beater beats every second, and forgets nodes not heard for a while.
func (n *Node) beater() {
	defer n.wg.Done()
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case now := <-t.C:
			n.measure(now)
			n.sendBeat()
			n.expire(now)
			n.joining(now) // says when it joined, whether or not /readyz asks
			for name := range *n.peers.Load() {
				n.maybeSync(name) // a copy that failed is tried again
			}
		}
	}
}

func (n *Node) sendBeat() {
	n.publishJSON(subjBeat, beat{Node: n.name, Inst: n.inst, Version: n.local.Load().version, Clients: n.clients(), Rate: n.ownRate(), Hears: n.hearing()})
}

// measure updates this node's messages/s (beater's goroutine only).
func (n *Node) measure(now time.Time) {
	srv := n.srv.Load()
	recv := atomic.LoadInt64(&srv.Info.MessagesReceived)
	if s := now.Sub(n.lastAt).Seconds(); s > 0 {
		n.rate.Store(math.Float64bits(float64(recv-n.lastRecv) / s))
	}
	n.lastRecv, n.lastAt = recv, now
}

func (n *Node) ownRate() float64 { return math.Float64frombits(n.rate.Load()) }

// update replaces (or removes, when f returns nil) the peer name. A peer
// without a window (a new one, or a new run of it) gets a new one, and
// the waiters of the window it replaces go (flow.go).
func (n *Node) update(name string, f func(old *peer) *peer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := *n.peers.Load()
	old := cur[name]
	p := f(old)
	if p != nil && p.win == nil {
		p.win = n.newWindow()
	}
	if old != nil && (p == nil || p.win != old.win) {
		old.win.release()
	}
	if p == nil {
		n.forgetInbound(name)
	}
	next := make(map[string]*peer, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	if p == nil {
		delete(next, name)
	} else {
		next[name] = p
	}
	n.peers.Store(&next)
}

func (n *Node) onBeat(m *nats.Msg) {
	var b beat
	if json.Unmarshal(m.Data, &b) != nil || !validName(b.Node) {
		return
	}
	if b.Node == n.name {
		n.log.Error("another node has this node's name: give each node its own cluster.node", "inst", b.Inst)
		return
	}
	now := time.Now()
	var ask, greet, again bool
	var back *lostPeer
	n.update(b.Node, func(old *peer) *peer {
		p := &peer{name: b.Node, inst: b.Inst, seen: now, heard: now, clients: b.Clients, rate: b.Rate,
			hearsUs: b.Hears == nil || slices.Contains(b.Hears, n.name)}
		if old == nil {
			if back = n.takeLost(b.Node); back != nil && back.inst == b.Inst {
				// The run taken for gone: its filters as they were (asked
				// for again below if they changed meanwhile).
				p.in, p.dur = back.in, back.dur
			}
		}
		if old != nil && old.inst == b.Inst {
			p.in, p.dur, p.asked, p.win, p.heard = old.in, old.dur, old.asked, old.win, old.heard
			// Heard again after a gap (its beats missed, or it did not
			// hear this node for a while): a partition between the two.
			// What it published meanwhile did not come here: its
			// retained messages are copied again (retained.go).
			if gap := now.Sub(old.seen); gap > beatGap || (!old.hearsUs && p.hearsUs && old.seen.Sub(old.heard) > beatGap) {
				p.heard, again = now, true
			}
		} else {
			greet = true // new to us: tell it about us without waiting
		}
		if (p.in == nil || p.in.version != b.Version) && now.Sub(p.asked) >= beatEvery {
			ask, p.asked = true, now
		}
		return p
	})
	n.backAgain(b.Node, b.Inst, back)
	if ask {
		_ = n.nc.Publish(subjWant+b.Node, nil)
	}
	if again {
		n.log.Info("node heard again after a gap: copying its retained messages again", "peer", b.Node)
	}
	if greet {
		n.log.Info("node joined", "peer", b.Node)
		n.reintroduce()
		n.maybeSync(b.Node)
	}
}

func (n *Node) onInterest(m *nats.Msg) {
	var a announcement
	if json.Unmarshal(m.Data, &a) != nil || !validName(a.Node) || a.Node == n.name {
		return
	}
	in := newInterest(a.Version, a.Filters)
	var dur *interest
	if len(a.Durable) > 0 {
		dur = newInterest(a.Version, a.Durable)
	}
	var back *lostPeer
	n.update(a.Node, func(old *peer) *peer {
		if old == nil {
			back = n.takeLost(a.Node)
		}
		if old == nil || old.inst != a.Inst {
			now := time.Now()
			return &peer{name: a.Node, inst: a.Inst, seen: now, heard: now, in: in, dur: dur}
		}
		p := *old
		p.in, p.dur = in, dur
		return &p
	})
	n.backAgain(a.Node, a.Inst, back)
}

func (n *Node) onBye(m *nats.Msg) {
	var b bye
	if json.Unmarshal(m.Data, &b) != nil {
		return
	}
	left := false
	var back *lostPeer
	n.update(b.Node, func(old *peer) *peer {
		if old != nil && old.inst != b.Inst {
			return old // a newer run of it already
		}
		if old == nil {
			back = n.takeLost(b.Node)
		}
		left = old != nil
		return nil
	})
	n.backAgain(b.Node, b.Inst, back)
	n.log.Info("node left", "peer", b.Node)
	if left {
		n.nodeGone(b.Node)
	}
}

// expire forgets the nodes not heard for peerExpiry, once this node has
// made sure that it hears the bus itself (caughtUp, on a goroutine of
// its own: the beats go on meanwhile): a node whose own bus connection
// is behind hears every other node late, and must not take them for gone
// for that. A run of a node forgotten here is remembered (lostPeer)
// until it is heard again or for lostKept.
func (n *Node) expire(now time.Time) {
	n.forgetLost(now)
	silent := false
	for _, p := range *n.peers.Load() {
		silent = silent || now.Sub(p.seen) > peerExpiry
	}
	if !silent || !n.expiring.CompareAndSwap(false, true) {
		return
	}
	n.goBackground(func() {
		defer n.expiring.Store(false)
		if n.caughtUp() {
			n.forget(time.Now())
		}
	})
}

// forget forgets the nodes not heard for peerExpiry at now.
func (n *Node) forget(now time.Time) {
	for name, p := range *n.peers.Load() {
		if now.Sub(p.seen) > peerExpiry {
			lost := false
			n.update(name, func(old *peer) *peer {
				if old != nil && now.Sub(old.seen) > peerExpiry {
					n.log.Warn("node lost: not heard from; messages for its subscribers are not sent to it until it is heard again",
						"peer", name, "for", now.Sub(old.seen).Round(time.Second))
					n.rememberLost(old, now)
					lost = true
					return nil
				}
				return old
			})
			if lost {
				n.nodeGone(name)
			}
		}
	}
}

// caughtUp reports whether this node has taken in what the bus held for
// it: a round trip to its NATS server, whose answer comes after all it
// queued for this node before (waited for at most peerExpiry), and no
// beat left waiting for its handler. When this node's bus reader is
// behind (the NATS server holds the windows' messages for it ahead of the
// beats, or the process is starved of CPU), or its connection is busy
// sending (its requests, the answers to the server's pings among them,
// wait behind its own messages, and its reader waits for those answers),
// the beats of the others reach it late, and it does not take them for
// gone: TestBusSlowReaderForgetsNobody. Its connection down: true, the
// others are forgotten as before.
func (n *Node) caughtUp() bool {
	if n.nc.Status() != nats.CONNECTED {
		return true
	}
	ctx, cancel := context.WithTimeout(n.stopCtx, peerExpiry)
	defer cancel()
	err := n.nc.FlushWithContext(ctx)
	switch {
	case n.stopCtx.Err() != nil:
		return false // closing: nobody is forgotten now
	case err != nil && n.nc.Status() != nats.CONNECTED:
		return true
	case err != nil:
		n.log.Info("not forgetting the nodes not heard from: this node's own bus connection is behind", "waited", peerExpiry, "error", err)
		return false
	}
	if q, _, err := n.beatSub.Pending(); err == nil && q > 0 {
		return false // the next beat looks again, once they are handled
	}
	return true
}

// lostPeer is a run of another node that this node took for gone
// (expire; not one that said goodbye): its filters, and the messages
// for its subscribers that were not sent to it meanwhile. If that run is
// heard again (it was alive, only late: its beats delayed past
// peerExpiry, or a partition), its filters are taken up at once, not
// after the round trip of asking for them, which to a node whose bus
// reader is behind takes seconds; and what it was not sent is counted
// (tether_cluster_messages_dropped_total{reason="lost"}) and logged:
// acknowledged messages are not lost silently.
type lostPeer struct {
	inst    string
	in, dur *interest
	at      time.Time

	mu      sync.Mutex
	missed  uint64 // messages for its subscribers not sent
	settled bool   // heard again: counted directly
}

// lostKept bounds how long a lost run is remembered (one that does not
// come back: its node was killed or restarted, and nothing counts the
// messages for its subscribers).
const lostKept = 10 * time.Minute

// rememberLost keeps what p was (n.mu held).
func (n *Node) rememberLost(p *peer, now time.Time) {
	cur := *n.lost.Load()
	next := make(map[string]*lostPeer, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[p.name] = &lostPeer{inst: p.inst, in: p.in, dur: p.dur, at: now}
	n.lost.Store(&next)
}

// takeLost removes and returns the lost run of name (n.mu held); nil
// when there is none.
func (n *Node) takeLost(name string) *lostPeer {
	cur := *n.lost.Load()
	l := cur[name]
	if l == nil {
		return nil
	}
	next := make(map[string]*lostPeer, len(cur))
	for k, v := range cur {
		if k != name {
			next[k] = v
		}
	}
	n.lost.Store(&next)
	return l
}

// forgetLost drops the lost runs remembered for longer than lostKept.
func (n *Node) forgetLost(now time.Time) {
	for name, l := range *n.lost.Load() {
		if now.Sub(l.at) > lostKept {
			n.mu.Lock()
			if cur := (*n.lost.Load())[name]; cur == l {
				n.takeLost(name)
			}
			n.mu.Unlock()
		}
	}
}

// backAgain counts and logs what a lost run, heard again as inst, was not
// sent while it was taken for gone; nothing when l is nil or another run.
func (n *Node) backAgain(name, inst string, l *lostPeer) {
	if l == nil || l.inst != inst {
		return
	}
	l.mu.Lock()
	l.settled = true
	missed := l.missed
	l.mu.Unlock()
	if missed > 0 {
		n.m.dropped.WithLabelValues("lost").Add(float64(missed))
	}
	n.log.Warn("node heard again after it was taken for lost: it was alive, late; the messages for its subscribers published meanwhile were not sent to it",
		"peer", name, "after", time.Since(l.at).Round(time.Millisecond), "messages", missed)
}

// missedLost notes, for each lost run with a subscriber for name (a
// plain filter, or a shared group that no node serves: served says which
// are), that a message was not sent to it (forward).
func (n *Node) missedLost(name string, lost map[string]*lostPeer, served func(key string) bool) {
	for _, l := range lost {
		if l.in == nil {
			continue
		}
		missed := l.in.matches(name)
		if !missed {
			l.in.eachShared(name, func(key string) { missed = missed || !served(key) })
		}
		if !missed {
			continue
		}
		l.mu.Lock()
		if l.settled {
			n.m.dropped.WithLabelValues("lost").Inc() // heard again just now
		} else {
			l.missed++
		}
		l.mu.Unlock()
	}
}

// nodeName is what a node's name may be: it is part of NATS subjects
// (configs checks cluster.node the same way).
var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func validName(s string) bool { return nodeName.MatchString(s) }
