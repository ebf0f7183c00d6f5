package cluster

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
)

// A QoS 1/2 message for a persistent session on another node is durable
// before its publisher's acknowledgement, as one for a session here is
// (broker/sessions): each node announces, beside its filters, those of
// its persistent sessions (durable); the publisher's node sends a
// matching message to those nodes before the engine acknowledges it
// (OnPublish), as a request, and each answers once its session store has
// committed what the message put in their queues. The publisher waits
// for the answers at most durableWait; after that (a node going away)
// the acknowledgement goes anyway. Such a node does not get the message
// a second time after the acknowledgement (OnPublished). The requests
// in flight to a node hold at most durableBytes (flow.go), so that with
// the windows they fit in what the NATS server holds for that node; a
// publisher whose request would overfill them waits for room within the
// same durableWait, and without it its message goes to that node through
// the window after the acknowledgement, as one that is not durable.

// durableWait bounds a publisher's wait for the other nodes' commits.
const durableWait = 2 * time.Second

// hdrSync asks the receiving node to answer once the message is durable.
const hdrSync = "Tether-Sync"

// Durability tells the node which sessions are persistent and how to
// wait for the session store's commit (broker/sessions: Store.Persistent,
// Store.Barrier).
type Durability struct {
	Persistent func(cl *mqtt.Client) bool
	// Barrier returns a channel closed once everything the store has
	// been given so far is committed (or has failed).
	Barrier func() <-chan struct{}
}

// SetDurability makes QoS 1/2 messages for persistent sessions on other
// nodes durable before their acknowledgement (see above).
func (n *Node) SetDurability(d Durability) { n.durable.Store(&d) }

// early is what OnPublish did with a publisher's current message: the
// nodes it sent it to, and the shared groups it gave each node (which
// OnPublished keeps, rather than choose again).
type early struct {
	sent     map[string]bool
	assigned map[string][]string
}

// sentEarly records, per publisher, what OnPublish did with its current
// message. Empty, as it is unless persistent sessions elsewhere match, it
// costs one atomic load per message.
type sentEarly struct {
	m sync.Map // *mqtt.Client -> *early
	n atomic.Int64
}

func (s *sentEarly) put(cl *mqtt.Client, e *early) {
	if _, loaded := s.m.Swap(cl, e); !loaded {
		s.n.Add(1)
	}
}

func (s *sentEarly) take(cl *mqtt.Client) *early {
	if s.n.Load() == 0 {
		return nil
	}
	v, ok := s.m.LoadAndDelete(cl)
	if !ok {
		return nil
	}
	s.n.Add(-1)
	return v.(*early)
}

// SkipsQoS0 tells the broker's hook set (broker.hookSet) that OnPublish
// does nothing for a QoS 0 PUBLISH (OnPublished forwards every one).
func (h *hook) SkipsQoS0(event byte) bool { return event == mqtt.OnPublish }

// OnPublish sends a client's QoS 1/2 message to the nodes whose
// persistent sessions it matches, and waits for their commits.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	n := h.n
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline || n.srv.Load() == nil || n.durable.Load() == nil {
		return pk, nil
	}
	n.early.take(cl) // a previous message that never reached OnPublished
	name := pk.TopicName
	peers := *n.peers.Load()
	var to []string
	for _, p := range peers {
		if p.dur != nil && p.dur.matches(name) {
			to = append(to, p.name)
		}
	}
	if len(to) == 0 {
		return pk, nil
	}
	e := &early{sent: map[string]bool{}, assigned: n.assignShared(name, peers)}
	data, err := encodePublish(pk)
	if err != nil {
		return pk, nil // OnPublished counts it
	}
	n.early.put(cl, e)
	var late atomic.Bool
	// One bound for the publisher's whole wait: for room, then for the
	// answers.
	deadline := time.Now().Add(durableWait)
	request := func(msg *nats.Msg) {
		// No responders too: a node that vanished from the bus (killed,
		// cut off) before the others forgot it holds the sessions, and
		// nothing committed the message for them.
		if _, err := n.nc.RequestMsg(msg, max(time.Until(deadline), time.Millisecond)); err != nil {
			late.Store(true)
		}
	}
	var wg sync.WaitGroup
	size := uint64(len(data))
	for i, node := range to {
		// The requests in flight to a node fit in what the NATS server
		// holds for it beside the windows (flow.go). One that cannot
		// get its room in time is not durable before the PUBACK: it
		// goes through the node's window after it (OnPublished).
		w := peers[node].win
		if !n.reserveDurable(w, size, cl, deadline) {
			late.Store(true)
			continue
		}
		msg := &nats.Msg{Subject: subjMsg + node, Data: data, Header: nats.Header{hdrOrigin: {n.name}, hdrSync: {"1"}}}
		for _, k := range e.assigned[node] {
			msg.Header.Add(hdrShared, encodeName(k))
		}
		e.sent[node] = true // sent, or the bus is down: not again after the PUBACK
		n.m.sent.Inc()
		if i == len(to)-1 {
			request(msg) // the last (often the only) one on this goroutine
			w.releaseDurable(size)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.releaseDurable(size)
			request(msg)
		}()
	}
	wg.Wait()
	if late.Load() {
		n.m.notDurable.Inc()
		n.log.Debug("another node did not confirm a message for its persistent sessions in time", "topic", name)
	}
	return pk, nil
}

// answerDurable answers m, a message sent with hdrSync, once what its
// injection queued is committed.
func (n *Node) answerDurable(m *nats.Msg) {
	if m.Reply == "" || m.Header.Get(hdrSync) == "" {
		return
	}
	d := n.durable.Load()
	if d == nil || d.Barrier == nil {
		_ = m.Respond(nil)
		return
	}
	done := d.Barrier()
	n.goBackground(func() {
		t := time.NewTimer(durableWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		}
		_ = m.Respond(nil)
	})
}
