package cluster

import (
	"time"

	"github.com/nats-io/nats.go"
)

// subjRetained + node: send me your retained messages (a request; the
// answer is one message per retained message, then an empty one).
const subjRetained = "tether.retained."

// syncWait bounds the wait for each answer of a retained sync.
const syncWait = 5 * time.Second

// onRetainedWanted streams this node's retained messages to the asker.
func (n *Node) onRetainedWanted(m *nats.Msg) {
	srv := n.srv.Load()
	if m.Reply == "" || srv == nil {
		return
	}
	for _, pk := range srv.Topics.Retained.GetAll() {
		if pk.Expiry > 0 && pk.Expiry < time.Now().Unix() {
			continue
		}
		data, err := encodePublish(pk)
		if err != nil {
			continue
		}
		if err := n.nc.Publish(m.Reply, data); err != nil {
			return
		}
	}
	_ = n.nc.Publish(m.Reply, nil)
}

// maybeSync copies the retained messages of peer unless that is done or
// under way.
func (n *Node) maybeSync(peer string) {
	if n.synced.Load() || !n.syncing.CompareAndSwap(false, true) {
		return
	}
	n.goBackground(func() {
		defer n.syncing.Store(false)
		if n.syncRetained(peer) {
			n.synced.Store(true)
		}
	})
}

// syncRetained copies the retained messages of the node peer into this
// node's engine, once, when this node first hears another (and again
// each second until a copy completes): a node that
// starts after a retained message was published answers subscriptions
// with it all the same. A topic this node already retains keeps its own
// (newer) message. They are stored, not delivered: nobody here
// subscribed before they arrived.
func (n *Node) syncRetained(peer string) (done bool) {
	inbox := n.nc.NewRespInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return false
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	if err := n.nc.PublishRequest(subjRetained+peer, inbox, nil); err != nil {
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
		if len(srv.Topics.Messages(pk.TopicName)) > 0 {
			continue
		}
		pk.Origin = n.injector.ID
		pk.Created = time.Now().Unix()
		if e := pk.Properties.MessageExpiryInterval; e > 0 {
			pk.Expiry = pk.Created + int64(e)
		}
		srv.Topics.RetainMessage(pk)
		count++
	}
}
