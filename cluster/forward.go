package cluster

import (
	"slices"
	"sort"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"

	topicpkg "github.com/tether-iot/tether/devices/topic"
	"github.com/tether-iot/tether/internal/logtext"
)

// hook is the node's engine hook.
type hook struct {
	mqtt.HookBase
	n *Node
}

func (h *hook) ID() string { return "tether-cluster" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnPublished, mqtt.OnWillSent, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnSelectSubscribers,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnRetainMessage:
		return true
	}
	return false
}

// OnPublished forwards what this node accepted (clients' publishes, the
// broker's own); what came from the bus stays here.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if h.n.srv.Load() == nil || cl == h.n.injector {
		return
	}
	var e *early
	if pk.FixedHeader.Qos > 0 && !cl.Net.Inline {
		e = h.n.early.take(cl)
	}
	h.n.forward(pk, e, cl)
}

// OnRetainMessage keeps the deletions of retained messages, telling
// those made on this node from those that came from the bus (retained.go).
func (h *hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, _ int64) {
	h.n.tombs.note(pk.TopicName, len(pk.Payload) == 0, cl != h.n.injector, time.Now().Unix())
}

// OnDisconnect forgets what OnPublish recorded for the client.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.n.early.take(cl) }

// OnWillSent forwards a will as the access hook left it (an empty topic
// when the will was no longer allowed: then nothing).
func (h *hook) OnWillSent(_ *mqtt.Client, pk packets.Packet) { h.n.forward(pk, nil, nil) }

func (h *hook) OnSubscribed(*mqtt.Client, packets.Packet, []byte) { h.n.touch() }

func (h *hook) OnUnsubscribed(*mqtt.Client, packets.Packet) { h.n.touch() }

// OnSessionEstablished announces the subscriptions of a session the
// connection inherited (one taken from another node: no SUBSCRIBE
// tells).
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.State.Subscriptions.Len() > 0 {
		h.n.touch()
	}
}

// OnSelectSubscribers keeps, of a message from the bus, only the shared
// subscriptions the sending node gave this node to serve.
func (h *hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if h.n.srv.Load() == nil || pk.Origin != h.n.injector.ID {
		return subs
	}
	for key := range subs.Shared {
		if !h.n.serving[key] {
			delete(subs.Shared, key)
		}
	}
	return subs
}

// forward sends pk to each other node that wants it: a matching plain
// filter, a shared group it is given to serve, or, retained, every node;
// except the nodes OnPublish sent it to already (e, durable.go). cl, the
// publisher, waits while a receiving node's window is full (flow.go).
func (n *Node) forward(pk packets.Packet, e *early, cl *mqtt.Client) {
	name := pk.TopicName
	if name == "" || pk.Ignore || strings.HasPrefix(name, "$SYS") || n.srv.Load() == nil {
		return
	}
	peers := *n.peers.Load()
	var assigned map[string][]string
	if lost := *n.lost.Load(); len(lost) > 0 {
		defer func() {
			n.missedLost(name, lost, func(key string) bool { return served(assigned, n.local.Load(), key) })
		}()
	}
	if len(peers) == 0 {
		return
	}
	if e != nil {
		assigned = e.assigned // the groups stay where OnPublish gave them
	} else {
		assigned = n.assignShared(name, peers)
	}
	var data []byte
	for _, p := range peers {
		keys := assigned[p.name]
		if e != nil && e.sent[p.name] {
			continue
		}
		if !pk.FixedHeader.Retain && len(keys) == 0 && (p.in == nil || !p.in.matches(name)) {
			continue
		}
		if data == nil {
			var err error
			if data, err = encodePublish(pk); err != nil {
				n.m.dropped.WithLabelValues("encode").Inc()
				n.log.Debug("message not forwarded", "error", err)
				return
			}
		}
		msg := &nats.Msg{Subject: subjMsg + p.name, Data: data, Header: nats.Header{hdrOrigin: {n.name}}}
		for _, k := range keys {
			msg.Header.Add(hdrShared, encodeName(k))
		}
		if err := n.send(p.win, msg, cl); err != nil {
			n.m.dropped.WithLabelValues("send").Inc()
			n.log.Debug("message not forwarded", "peer", p.name, "error", err)
			continue
		}
		n.m.sent.Inc()
	}
}

// served reports whether the shared group key is served by this node
// (local) or given to another (assigned).
func served(assigned map[string][]string, local *interest, key string) bool {
	if _, here := local.shared[key]; here {
		return true
	}
	for _, keys := range assigned {
		if slices.Contains(keys, key) {
			return true
		}
	}
	return false
}

// assignShared gives each shared group that matches name and has no
// member on this node to one of the other nodes holding it, in turn:
// node name -> the groups it serves. Nil when there are none.
func (n *Node) assignShared(name string, peers map[string]*peer) map[string][]string {
	var holders map[string][]string // group -> nodes
	local := n.local.Load()
	for _, p := range peers {
		if p.in == nil || len(p.in.shared) == 0 {
			continue
		}
		p.in.eachShared(name, func(key string) {
			if _, here := local.shared[key]; here {
				return // served here
			}
			if holders == nil {
				holders = map[string][]string{}
			}
			holders[key] = append(holders[key], p.name)
		})
	}
	if holders == nil {
		return nil
	}
	out := map[string][]string{}
	for key, nodes := range holders {
		sort.Strings(nodes)
		pick := nodes[n.turn.Add(1)%uint64(len(nodes))]
		out[pick] = append(out[pick], key)
	}
	return out
}

// tooDeep reports whether topic has more levels than mqtt.max_topic_levels
// (Options.MaxTopicLevels) allows.
func (n *Node) tooDeep(topic string) bool {
	return n.maxLevels > 0 && topicpkg.Levels(topic) > n.maxLevels
}

// onMessage injects a message from another node into this node's engine.
func (n *Node) onMessage(m *nats.Msg) {
	origin := m.Header.Get(hdrOrigin)
	if origin == "" || origin == n.name {
		n.m.dropped.WithLabelValues("loop").Inc()
		return
	}
	pk, err := decodePublish(m.Data)
	if err != nil {
		n.m.dropped.WithLabelValues("malformed").Inc()
		n.log.Debug("bus message dropped", "from", origin, "error", err)
		return
	}
	n.serving = nil
	for _, v := range m.Header.Values(hdrShared) {
		if key, ok := decodeName(v); ok {
			if n.serving == nil {
				n.serving = map[string]bool{}
			}
			n.serving[key] = true
		}
	}
	if n.tooDeep(pk.TopicName) {
		// Refused as this node's clients' would be; the sender's flow
		// credit and durable wait are answered below, as for any
		// message that was not delivered.
		n.m.dropped.WithLabelValues("topic_levels").Inc()
		n.log.Debug("bus message refused: more topic levels than mqtt.max_topic_levels", "from", origin,
			"topic", logtext.Short(pk.TopicName), "limit", n.maxLevels)
	} else {
		srv := n.srv.Load()
		n.holding.Store(true)
		err = srv.InjectPacket(n.injector, pk)
		n.holding.Store(false)
		n.injections.Add(1)
		if err != nil {
			n.m.dropped.WithLabelValues("inject").Inc()
			n.log.Debug("bus message not delivered", "from", origin, "error", err)
		} else {
			n.m.received.Inc()
		}
	}
	n.serving = nil
	if v := m.Header.Get(hdrSeq); v != "" {
		n.injected(origin, v)
	}
	n.answerDurable(m)
}
