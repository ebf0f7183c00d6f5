package cluster

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/nats-io/nats.go"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/listeners"
)

// Flow control across nodes. NATS core does not slow a sender down: a
// node that injects more slowly than the others send (its subscriber is
// behind, broker.Backpressure holds the injection) would fill its bus
// subscription's buffer and lose what overflows. So each stream of
// messages from this node to another one is a credit window: every
// message carries its stream's sequence number and the cumulative bytes
// (hdrSeq); the receiving node, once it has injected messages into its
// engine, acknowledges the highest sequence number it has seen
// (cumulatively: a message lost in between is covered by a later one) on
// the sender's ack subject, every flowAckEvery messages, and within
// flowAckDelay when the sender asks for it (the message's window is half
// used). A client's publish (any QoS, as a local subscriber holds back
// its publishers at any QoS) whose stream has flowWindow messages or
// windowBytes outstanding waits, on the publisher's goroutine after its
// acknowledgement, for credit: Options.FlowWait (mqtt.backpressure_wait),
// and another such round while the receiving node says that it is held
// back by a slow subscriber (heldNotices: a slow subscriber holds its
// node's injection for up to broker.WaitRounds rounds as it drains) or
// that it is taking in other nodes' messages (its bus reader is behind,
// and this node's messages wait behind theirs), or acknowledges anything
// (it takes in, slowly, and other publishers took the room), at most
// broker.WaitRounds in all. A wait that times out marks the window stuck
// (counted): nobody waits for it again until an acknowledgement comes
// back, so a node that stopped answering costs each publisher at most
// one wait. The broker's own publishes and wills never wait. A node that
// leaves (its goodbye) or is lost (no beat for peerExpiry), or restarts,
// gets a new window and the waiters of the old one go at once; so do all
// windows when this node's connection to the bus comes back.
//
// Windows are well below the receiving subscription's buffer (65,536
// messages, 256 MiB): eight nodes sending their whole windows at once
// fit. The tighter bound is the NATS server's: it holds at most
// natsMaxPending bytes for a connection that has not read them yet, and
// closes a connection past that as a slow consumer, losing what it held
// (the receiving node reconnects; those messages, acknowledged to their
// publishers, are gone). And it counts what one write to the connection
// carries as pending until the whole write ends, which to a slow reader
// takes seconds: meanwhile the node reads it, acknowledges, and the
// windows refill, so the server may count twice what the windows and
// durable requests hold. Every other node's window towards one node can
// be full at once, so each window holds at most flowPendingBudget
// divided among the other nodes (windowBytes): 20 MiB with one other,
// 10 MiB with two, 2.5 MiB with eight; the durable requests in flight,
// which are not part of a stream (durable.go), at most
// durablePendingBudget divided likewise (durableBytes): 4 MiB, 2 MiB and
// 512 KiB; twice both is three quarters of natsMaxPending. (With twice
// that, 40 MiB of windows towards one node of three, the server counted
// up to 80 MiB for a node whose reader was slow and closed its
// connection: TestClusterFlowControl at the default wait, on a loaded
// machine, lost 142 to 295 of 2,000 messages in 3 of 4 runs;
// TestBusSlowReaderWithinMaxPending.)
const (
	flowWindow   = 8192
	flowAckEvery = 512
	flowAckDelay = 2 * time.Millisecond

	// natsMaxPending is the NATS server's max_pending: its default,
	// which the embedded server keeps and an external server should
	// not go below.
	natsMaxPending = 64 << 20
	// flowPendingBudget is what all windows towards one node may hold
	// together, and durablePendingBudget what all durable requests
	// towards it may (durable.go): counted twice, they leave a quarter
	// of natsMaxPending for acknowledgements, answers, beats and
	// messages that do not wait (the broker's own, wills).
	flowPendingBudget    = natsMaxPending * 5 / 16
	durablePendingBudget = natsMaxPending / 16
)

// windowBytes is the byte bound of each window when there are peers
// other nodes: their windows towards any one node fit the budget.
func windowBytes(peers int) uint64 {
	return uint64(flowPendingBudget / max(peers, 1))
}

// durableBytes bounds the bytes of this node's durable requests in
// flight to one other node (beside its window) when there are peers
// other nodes: theirs towards any one node fit durablePendingBudget.
func durableBytes(peers int) uint64 {
	return uint64(durablePendingBudget / max(peers, 1))
}

// hdrSeq carries "stream seq bytes", and " !" when the sender asks for a
// prompt acknowledgement.
const hdrSeq = "Tether-Seq"

// subjAck + node: acknowledgements of what that node sent.
const subjAck = "tether.ack."

// subjTaking: a node says that it is taking in messages (heldNotices).
const subjTaking = "tether.taking"

// flowAck acknowledges a stream up to Seq (and Bytes, cumulative).
type flowAck struct {
	Node   string `json:"node"` // the acknowledging node
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
	Bytes  uint64 `json:"bytes"`
	// Held: the acknowledging node is held back injecting the next
	// message by a slow subscriber, and is draining it (heldNotices).
	Held bool `json:"held,omitempty"`
}

// window is this node's stream of messages to one other node (one per
// run of that node: peer.win).
type window struct {
	stream string
	count  uint64 // the most messages outstanding: flowWindow (a test may set less)

	mu                sync.Mutex
	sent, sentBytes   uint64
	acked, ackedBytes uint64
	stuck             bool          // a wait timed out; cleared by an acknowledgement
	helds             uint64        // the node's notices that it is held back (flowAck.Held)
	released          bool          // the node went or the stream was reset
	wake              chan struct{} // closed when credit returns or on release; then replaced
	// durable is the bytes of durable requests (durable.go) in flight
	// to the node, which are not part of the stream.
	durable uint64
}

// newWindow is a new stream to another node; nil without flow control.
func (n *Node) newWindow() *window {
	if n.flowWait <= 0 {
		return nil
	}
	gen := n.streams.Add(1)
	return &window{stream: n.inst[:12] + "." + strconv.FormatUint(gen, 10), count: flowWindow, wake: make(chan struct{})}
}

// release lets every waiter go; the window is no longer waited for.
func (w *window) release() {
	if w == nil {
		return
	}
	w.mu.Lock()
	if !w.released {
		w.released = true
		close(w.wake)
	}
	w.mu.Unlock()
}

// room reports whether a message of size may be sent now, with limit
// bytes the window's bound (w.mu held).
func (w *window) room(size, limit uint64) bool {
	out := w.sent - w.acked
	return out == 0 || out < w.count && w.sentBytes-w.ackedBytes+size <= limit
}

// reserveDurable takes size bytes of w's bound for durable requests
// before cl's message goes to w's node as one, waiting while requests in
// flight hold them, until deadline; false when it did not get them
// (this node is closing, or the wait timed out: the node is not taking
// in what it is sent, or cannot commit it fast enough). A request that
// goes alone always gets them, however large. Without flow control it
// always does.
func (n *Node) reserveDurable(w *window, size uint64, cl *mqtt.Client, deadline time.Time) bool {
	if w == nil {
		return true
	}
	limit := durableBytes(len(*n.peers.Load()))
	var timer *time.Timer
	var start time.Time
	got := true
	w.mu.Lock()
	for !w.released && w.durable > 0 && w.durable+size > limit {
		ch := w.wake
		w.mu.Unlock()
		if timer == nil {
			listeners.FlushAcks(cl.Net.Conn) // the acknowledgements already given go out
			start = time.Now()
			timer = time.NewTimer(time.Until(deadline))
			n.m.flowWaits.Inc()
		}
		select {
		case <-ch:
		case <-timer.C: // counted as not durable by the caller
			got = false
		case <-n.stop:
			got = false
		}
		w.mu.Lock()
		if !got {
			break
		}
	}
	if got {
		w.durable += size
	}
	w.mu.Unlock()
	if timer != nil {
		timer.Stop()
		n.m.flowWaited.Add(time.Since(start).Seconds())
	}
	return got
}

// releaseDurable gives back what reserveDurable took for a request that
// was answered or timed out.
func (w *window) releaseDurable(size uint64) {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.durable -= size
	if !w.released {
		close(w.wake)
		w.wake = make(chan struct{})
	}
	w.mu.Unlock()
}

// send publishes msg to the node of w, first waiting for credit when cl
// is a client (not the broker itself) and the window is full.
func (n *Node) send(w *window, msg *nats.Msg, cl *mqtt.Client) error {
	if w == nil {
		return n.nc.PublishMsg(msg)
	}
	size := uint64(len(msg.Data))
	limit := windowBytes(len(*n.peers.Load()))
	wait := cl != nil && !cl.Net.Inline
	var timer *time.Timer
	var start time.Time
	var rounds int
	var helds, acked uint64
	w.mu.Lock()
	for wait && !w.stuck && !w.released && !w.room(size, limit) {
		ch := w.wake
		if timer == nil {
			helds, acked = w.helds, w.acked
		}
		w.mu.Unlock()
		if timer == nil {
			listeners.FlushAcks(cl.Net.Conn) // the acknowledgements already given go out
			start = time.Now()
			timer = time.NewTimer(n.flowWait)
			n.m.flowWaits.Inc()
		}
		select {
		case <-ch:
		case <-timer.C:
			rounds++
			w.mu.Lock()
			if (w.helds != helds || w.acked != acked) && rounds < broker.WaitRounds {
				// Held back by a slow subscriber, or taking in what it is
				// sent, only not fast enough for this publisher to find
				// room (others took it): another round.
				helds, acked = w.helds, w.acked
				timer.Reset(n.flowWait)
				w.mu.Unlock()
				break
			}
			n.m.flowTimeouts.Inc()
			wait = false
			w.stuck = true
			w.mu.Unlock()
		case <-n.stop:
			wait = false
		}
		w.mu.Lock()
	}
	if timer != nil {
		timer.Stop()
		n.m.flowWaited.Add(time.Since(start).Seconds())
	}
	defer w.mu.Unlock()
	w.sent++
	w.sentBytes += size
	prompt := w.sent-w.acked >= w.count/2 || w.sentBytes-w.ackedBytes >= limit/2
	b := make([]byte, 0, len(w.stream)+48)
	b = append(b, w.stream...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, w.sent, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, w.sentBytes, 10)
	if prompt {
		b = append(b, " !"...)
	}
	msg.Header.Set(hdrSeq, string(b))
	// Under w.mu: the stream's messages leave in their order.
	if err := n.nc.PublishMsg(msg); err != nil {
		w.sent--
		w.sentBytes -= size
		return err
	}
	return nil
}

// onAck takes another node's acknowledgement of what this node sent it.
func (n *Node) onAck(m *nats.Msg) {
	var a flowAck
	if json.Unmarshal(m.Data, &a) != nil {
		return
	}
	p := (*n.peers.Load())[a.Node]
	if p == nil || p.win == nil {
		return
	}
	if m.Subject == subjTaking {
		// The node is taking in (others' messages, ahead of this
		// node's): like a held notice.
		p.win.mu.Lock()
		p.win.helds++
		p.win.mu.Unlock()
		return
	}
	if p.win.stream != a.Stream {
		return // a stream of before
	}
	w := p.win
	w.mu.Lock()
	defer w.mu.Unlock()
	if a.Held {
		w.helds++
	}
	if a.Seq <= w.acked || a.Seq > w.sent || a.Bytes < w.ackedBytes || a.Bytes > w.sentBytes {
		return
	}
	w.acked, w.ackedBytes = a.Seq, a.Bytes
	w.stuck = false
	if !w.released {
		close(w.wake)
		w.wake = make(chan struct{})
	}
}

// inbound is what this node has injected of one other node's stream.
type inbound struct {
	stream            string
	seq, bytes, acked uint64
}

// inflow is the receiving side: one inbound per sending node.
type inflow struct {
	mu    sync.Mutex
	in    map[string]*inbound
	armed bool // a prompt acknowledgement is due
}

// injected notes that a message of origin's stream (its hdrSeq value v)
// is in the engine, and acknowledges when due.
func (n *Node) injected(origin, v string) {
	stream, rest, ok1 := strings.Cut(v, " ")
	seqs, rest, _ := strings.Cut(rest, " ")
	bytess, flag, _ := strings.Cut(rest, " ")
	seq, err1 := strconv.ParseUint(seqs, 10, 64)
	bytes, err2 := strconv.ParseUint(bytess, 10, 64)
	if !ok1 || err1 != nil || err2 != nil || stream == "" || !validName(origin) {
		return
	}
	f := &n.inflow
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.in == nil {
		f.in = map[string]*inbound{}
	}
	in := f.in[origin]
	if in == nil || in.stream != stream {
		in = &inbound{stream: stream}
		f.in[origin] = in
	}
	if seq > in.seq {
		in.seq, in.bytes = seq, bytes
	}
	switch {
	case in.seq-in.acked >= flowAckEvery:
		n.ack(origin, in)
	case flag == "!" && !f.armed:
		f.armed = true
		time.AfterFunc(flowAckDelay, n.flushAcks)
	}
}

// flushAcks acknowledges every stream's progress (the prompt timer).
func (n *Node) flushAcks() {
	f := &n.inflow
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = false
	for origin, in := range f.in {
		if in.seq > in.acked {
			n.ack(origin, in)
		}
	}
}

// ack sends origin the acknowledgement of in (inflow.mu held).
func (n *Node) ack(origin string, in *inbound) {
	in.acked = in.seq
	b, _ := json.Marshal(flowAck{Node: n.name, Stream: in.stream, Seq: in.seq, Bytes: in.bytes})
	_ = n.nc.Publish(subjAck+origin, b)
}

// heldNotices tells the nodes whose messages this node is injecting,
// while one injection is held back by a slow subscriber
// (broker.Backpressure, which waits in rounds of mqtt.backpressure_wait
// while the subscriber drains), that it is: each quarter of a round
// that the same injection is still in the engine, every stream it has
// taken messages of is acknowledged with Held, so that their publishers
// wait for credit another round instead of taking this node for stuck
// and sending past their window (which the NATS server, holding more
// than its max_pending for this node, would drop). Each quarter of a
// round in which it injected anything, it tells every node that it is
// taking in (subjTaking), which counts as a held notice: when its bus
// reader is behind (the process starved of CPU), a node whose messages
// wait behind another's window hears nothing of its own stream for
// longer than a round, and would otherwise take it for stuck likewise
// (TestBusSlowReaderWithinMaxPending: at load average 11, under the race
// detector, a first round without an acknowledgement, 2 to 5 waits timed
// out a run and the server closed the node's connection).
func (n *Node) heldNotices() {
	defer n.wg.Done()
	t := time.NewTicker(max(n.flowWait/4, time.Millisecond))
	defer t.Stop()
	last := n.injections.Load()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		done := n.injections.Load()
		if done != last {
			last = done
			n.publishJSON(subjTaking, flowAck{Node: n.name})
			continue
		}
		if !n.holding.Load() {
			continue
		}
		f := &n.inflow
		f.mu.Lock()
		for origin, in := range f.in {
			in.acked = in.seq
			b, _ := json.Marshal(flowAck{Node: n.name, Stream: in.stream, Seq: in.seq, Bytes: in.bytes, Held: true})
			_ = n.nc.Publish(subjAck+origin, b)
		}
		f.mu.Unlock()
	}
}

// forgetInbound drops what this node knew of a node that went.
func (n *Node) forgetInbound(origin string) {
	n.inflow.mu.Lock()
	delete(n.inflow.in, origin)
	n.inflow.mu.Unlock()
}

// resetWindows gives every other node a new stream, letting go the
// waiters of the old ones (this node's bus connection came back: what
// was in flight may be lost).
func (n *Node) resetWindows() {
	for name := range *n.peers.Load() {
		n.update(name, func(old *peer) *peer {
			if old == nil {
				return nil
			}
			p := *old
			p.win = nil // update gives it a new one
			return &p
		})
	}
}
