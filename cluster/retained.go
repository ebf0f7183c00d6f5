package cluster

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
)

// subjRetained + node: send me your retained messages (a request; the
// answer is one message per retained message, then an empty one). The
// request's data is empty for all of them, or retainedSinceStart.
const subjRetained = "tether.retained."

// retainedSinceStart asks only for the retained messages published on
// the answering node while it has run (since its start).
const retainedSinceStart = "since-start"

// syncWait bounds the wait for each answer of a retained sync.
const syncWait = 5 * time.Second

// syncAfter is how long after this node first hears another it copies
// what was published there since that node started: by then the other
// has heard this one (each beats every second), so what it publishes
// after that copy comes here as it is published.
const syncAfter = 3 * beatEvery

// syncState is what this node copied of the others' retained messages.
type syncState struct {
	started int64 // this node's start (Unix s): what "since start" means here

	mu      sync.Mutex
	full    bool              // a copy of all of another node's retained messages is done
	copied  map[string]copied // node -> the run of it and the hearing whose retained messages are copied
	copying map[string]bool   // node -> a copy is under way
}

// SetRetainedStore sets where this node writes the retained messages it
// copies from the others, and the deletions it takes from them: its
// session store, which writes those routed here through the engine's
// hooks (a copy goes into the engine without them).
func (n *Node) SetRetainedStore(f func(packets.Packet)) { n.keepRetained.Store(&f) }

// retain stores a copied retained message (or a deletion) in the engine
// and in the session store.
func (n *Node) retain(srv *mqtt.Server, pk packets.Packet) {
	srv.Topics.RetainMessage(pk)
	if f := n.keepRetained.Load(); f != nil {
		(*f)(pk)
	}
}

// copied names what a since-start copy was made for: a run of a node,
// heard from a time on (again after a gap: onBeat).
type copied struct {
	inst  string
	heard time.Time
}

// onRetainedWanted streams this node's retained messages to the asker:
// all of them, or those published here since this node started.
func (n *Node) onRetainedWanted(m *nats.Msg) {
	srv := n.srv.Load()
	if m.Reply == "" || srv == nil {
		return
	}
	sinceStart := string(m.Data) == retainedSinceStart
	for _, pk := range srv.Topics.Retained.GetAll() {
		if pk.Expiry > 0 && pk.Expiry < time.Now().Unix() {
			continue
		}
		// Since the start: published here in this run. Not from before
		// it (this node's store: the others have it, or deleted it
		// meanwhile), nor from another node (which the asker gets from
		// that node, and in an order with that node's deletions).
		if sinceStart && (pk.Created < n.sync.started || pk.Origin == n.injector.ID) {
			continue
		}
		data, err := encodePublish(pk)
		if err != nil {
			continue
		}
		msg := &nats.Msg{Subject: m.Reply, Data: data, Header: nats.Header{hdrCreated: {strconv.FormatInt(pk.Created, 10)}}}
		if err := n.nc.PublishMsg(msg); err != nil {
			return
		}
	}
	if sinceStart {
		// What was deleted here since the start, and not retained again.
		for _, t := range n.tombs.local() {
			if _, ok := srv.Topics.Retained.Get(t.topic); ok {
				continue
			}
			data, err := encodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: t.topic})
			if err != nil {
				continue
			}
			msg := &nats.Msg{Subject: m.Reply, Data: data, Header: nats.Header{hdrCreated: {strconv.FormatInt(t.at, 10)}, hdrDeleted: {"1"}}}
			if err := n.nc.PublishMsg(msg); err != nil {
				return
			}
		}
	}
	_ = n.nc.Publish(m.Reply, nil)
}

// maybeSync copies the retained messages of the node peer, unless a copy
// from it is under way. The first copy this node makes takes all of them,
// at once: a node that starts later answers subscriptions with the
// retained messages published before it. Then, from each other node
// (that one too) syncAfter after this node first heard it, once per run
// of it and again each time it is heard again after a gap (a partition
// between the two), a copy takes those published on that node since it
// started, and those deleted there since (tombs): so a retained message
// published or deleted on a node while the two did not hear each other
// (the routes between them forming, or broken) reaches this one still.
// Not older ones: a node's store may hold a retained message that was
// deleted everywhere else while it was down, which must not come back.
func (n *Node) maybeSync(peer string) {
	p := (*n.peers.Load())[peer]
	if p == nil {
		return
	}
	s := &n.sync
	s.mu.Lock()
	key := copied{p.inst, p.heard}
	if s.copying[peer] || s.copied[peer] == key {
		s.mu.Unlock()
		return
	}
	if s.copying == nil {
		s.copying, s.copied = map[string]bool{}, map[string]copied{}
	}
	full := !s.full
	if !full && time.Since(p.heard) < syncAfter {
		s.mu.Unlock()
		return // the beater asks again each second
	}
	s.copying[peer] = true
	s.mu.Unlock()
	n.goBackground(func() {
		ok := n.syncRetained(peer, full)
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.copying, peer)
		switch {
		case ok && full:
			// Made at once, before that node heard this one: what it
			// publishes until it does comes in the copy that follows.
			s.full = true
		case ok:
			s.copied[peer] = key
		}
	})
}

// syncRetained copies the retained messages of the node peer (all of
// them, or those published there since it started) into this node's
// engine, each with the time it was published. A topic this node already
// retains keeps its message unless the other's is newer: a device's
// status published on a node while it heard no other, or while this node
// was down (this node's store still holds the one from before). They are
// stored, not delivered: nobody here subscribed before they arrived.
func (n *Node) syncRetained(peer string, all bool) (done bool) {
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return false
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	var ask []byte
	if !all {
		ask = []byte(retainedSinceStart)
	}
	if err := n.nc.PublishRequest(subjRetained+peer, inbox, ask); err != nil {
		return false
	}
	srv := n.srv.Load()
	count := 0
	for {
		select {
		case <-n.stop:
			return false
		default:
		}
		m, err := sub.NextMsg(syncWait)
		if err != nil {
			n.log.Info("retained messages: copy from another node incomplete, trying again", "peer", peer, "copied", count, "error", err)
			return false
		}
		if len(m.Data) == 0 {
			n.log.Debug("retained messages copied from another node", "peer", peer, "count", count)
			return true
		}
		pk, err := decodePublish(m.Data)
		if err != nil {
			continue
		}
		pk.Created = time.Now().Unix()
		if c, err := strconv.ParseInt(m.Header.Get(hdrCreated), 10, 64); err == nil && c > 0 && c <= pk.Created {
			pk.Created = c
		}
		if len(pk.Payload) > 0 && n.tooDeep(pk.TopicName) {
			n.m.retainedDeep.Inc() // as this node's clients' would be
			continue
		}
		if len(pk.Payload) == 0 {
			// A deletion there: it wins over an older message here.
			if !all && m.Header.Get(hdrDeleted) != "" {
				if own, ok := srv.Topics.Retained.Get(pk.TopicName); ok && own.Created < pk.Created {
					n.retain(srv, pk)
					n.tombs.note(pk.TopicName, true, false, pk.Created) // as one from the bus
					count++
				}
			}
			continue
		}
		if own := srv.Topics.Messages(pk.TopicName); len(own) > 0 && own[0].Created >= pk.Created {
			continue // this node's is as new (its own, or one routed here)
		}
		if at, ok := n.tombs.deletedAt(pk.TopicName); ok && at >= pk.Created {
			continue // deleted here after it was published there
		}
		pk.Origin = n.injector.ID
		if e := pk.Properties.MessageExpiryInterval; e > 0 {
			pk.Expiry = pk.Created + int64(e)
		}
		n.retain(srv, pk)
		n.tombs.note(pk.TopicName, false, false, pk.Created)
		count++
	}
}

// maxTombs bounds the deletions a node keeps (the oldest go first).
const maxTombs = 1 << 16

// tombs are the retained messages deleted in this run, with when. Those
// deleted on this node (by its clients, wills or the broker; local) go
// with a copy of what this node published since it started, so that a
// deletion made while another node did not hear this one (a partition)
// reaches that node when it hears this one again. Those that came from
// the bus are kept too, for this node only: a copy from another node,
// taken before such a deletion and arriving after it, must not bring
// the message back. A topic retained here again is no longer deleted.
type tombs struct {
	mu    sync.Mutex
	at    map[string]tombAt // topic -> its last deletion
	order []tomb            // oldest first; entries no longer in at are skipped
	seq   uint64
	count atomic.Int32 // len(at), read without the lock
}

type tombAt struct {
	at    int64 // Unix s
	seq   uint64
	local bool
}

type tomb struct {
	topic string
	seq   uint64
}

// note records a retained message on topic deleted (or, !deleted, set
// again) at now; local: here, not from the bus.
func (t *tombs) note(topic string, deleted, local bool, now int64) {
	if !deleted && t.count.Load() == 0 {
		return // the common case: no deletion to forget
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !deleted {
		delete(t.at, topic)
		t.count.Store(int32(len(t.at)))
		return
	}
	if t.at == nil {
		t.at = map[string]tombAt{}
	}
	t.seq++
	t.at[topic] = tombAt{at: now, seq: t.seq, local: local}
	t.order = append(t.order, tomb{topic, t.seq})
	for len(t.at) > maxTombs {
		o := t.order[0]
		t.order = t.order[1:]
		if t.at[o.topic].seq == o.seq {
			delete(t.at, o.topic)
		}
	}
	if len(t.order) > 2*maxTombs { // the skipped entries: compact
		kept := make([]tomb, 0, len(t.at))
		for _, o := range t.order {
			if t.at[o.topic].seq == o.seq {
				kept = append(kept, o)
			}
		}
		t.order = kept
	}
	t.count.Store(int32(len(t.at)))
}

// deletedAt says when topic was last deleted (here or on another node),
// if it was and is not retained again.
func (t *tombs) deletedAt(topic string) (int64, bool) {
	if t.count.Load() == 0 {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.at[topic]
	return d.at, ok
}

// deletion is a topic deleted on this node, and when (Unix s).
type deletion struct {
	topic string
	at    int64
}

// local returns the deletions made on this node, oldest first.
func (t *tombs) local() []deletion {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]deletion, 0, len(t.at))
	for _, o := range t.order {
		if d := t.at[o.topic]; d.seq == o.seq && d.local {
			out = append(out, deletion{o.topic, d.at})
		}
	}
	return out
}
