package cluster

import (
	"strconv"
	"sync"
	"time"

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
	copied  map[string]string // node -> the run (inst) whose retained messages are copied
	copying map[string]bool   // node -> a copy is under way
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
	_ = n.nc.Publish(m.Reply, nil)
}

// maybeSync copies the retained messages of the node peer, unless a copy
// from it is under way. The first copy this node makes takes all of them,
// at once: a node that starts later answers subscriptions with the
// retained messages published before it. Then, from each other node
// (that one too) syncAfter after this node first heard it, once per run
// of it, a copy takes those published on that node since it started:
// so a retained message published on a node before it heard the others,
// while the routes between them formed, reaches them still. Not older
// ones: a node's store may hold a retained message that was deleted
// everywhere else while it was down, which must not come back.
func (n *Node) maybeSync(peer string) {
	p := (*n.peers.Load())[peer]
	if p == nil {
		return
	}
	s := &n.sync
	s.mu.Lock()
	if s.copying[peer] || s.copied[peer] == p.inst {
		s.mu.Unlock()
		return
	}
	if s.copying == nil {
		s.copying, s.copied = map[string]bool{}, map[string]string{}
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
			s.copied[peer] = p.inst
		}
	})
}

// syncRetained copies the retained messages of the node peer (all of
// them, or those published there since it started) into this node's
// engine, each with the time it was published. A topic this node already
// retains keeps its own message, unless, in a copy of what was published
// since the other node started, the other's is newer (a device's status
// published on a node while it heard no other, after the one this node
// holds). They are stored, not delivered: nobody here subscribed before
// they arrived.
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
		if err != nil || len(pk.Payload) == 0 {
			continue
		}
		pk.Created = time.Now().Unix()
		if c, err := strconv.ParseInt(m.Header.Get(hdrCreated), 10, 64); err == nil && c > 0 && c <= pk.Created {
			pk.Created = c
		}
		if own := srv.Topics.Messages(pk.TopicName); len(own) > 0 && (all || own[0].Created >= pk.Created) {
			continue
		}
		pk.Origin = n.injector.ID
		if e := pk.Properties.MessageExpiryInterval; e > 0 {
			pk.Expiry = pk.Created + int64(e)
		}
		srv.Topics.RetainMessage(pk)
		count++
	}
}
