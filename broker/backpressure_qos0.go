package broker

import (
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/listeners"
)

// QoS 0 backpressure: the engine drops a QoS 0 message for a subscriber
// whose send queue (mqtt.client_queue_size) is full; there is no
// acknowledgement to hold back, so Backpressure.OnPublish cannot see it
// coming. Instead, when the engine reports the drop (OnPublishDropped, on
// the publisher's reading goroutine), the publisher waits until the
// subscriber's writer has sent everything that was in the full queue, and
// then the message is written to the subscriber's connection after them,
// in order: nothing the same publisher sent earlier can still be queued,
// and its later messages wait for this one. The publisher's socket
// buffers fill meanwhile and TCP slows it down, as for QoS 1.
//
// The same bound applies, per subscriber found full (the hook does not see
// where one PUBLISH's routing ends): rounds of maxWait, another while the
// subscriber writes an eighth of the queue in each, at most WaitRounds
// (backpressure.go); a subscriber that does not drain in time is marked stuck and then dropped for (the
// engine's counting) until it has drained. Retained messages (Retained
// handles those of a new subscription), the engine's own publishes and
// wills are left to the engine.

// queueField is the index of the engine's send queue (an unexported
// channel) in mqtt.Client; nil if this engine version has none, and then
// QoS 0 messages are dropped as the engine does. The engine exports no
// length of it (docs/upstream.md).
var queueField = func() []int {
	f, ok := reflect.TypeOf(mqtt.Client{}).FieldByName("State")
	if !ok {
		return nil
	}
	q, ok := f.Type.FieldByName("outbound")
	if !ok || q.Type.Kind() != reflect.Chan {
		return nil
	}
	return append(f.Index, q.Index...)
}()

// queueLen is the number of packets in cl's send queue.
func queueLen(cl *mqtt.Client) int {
	return reflect.ValueOf(cl).Elem().FieldByIndex(queueField).Len()
}

// qtyField is the index of the engine's count of cl's queued packets
// (State.outboundQty), which the writer lowers only once it has written
// the packet it took from the queue; nil if this engine version has none.
var qtyField = func() []int {
	f, ok := reflect.TypeOf(mqtt.Client{}).FieldByName("State")
	if !ok {
		return nil
	}
	q, ok := f.Type.FieldByName("outboundQty")
	if !ok || q.Type.Kind() != reflect.Int32 {
		return nil
	}
	return append(f.Index, q.Index...)
}()

// unwritten tells whether cl's writer still has packets to write: queued,
// or taken from the queue and not yet written. The queue's length alone
// is 0 while the writer holds the last packet, and a message written
// directly then would overtake it.
func unwritten(cl *mqtt.Client) bool {
	if queueLen(cl) > 0 {
		return true
	}
	if qtyField == nil {
		return false
	}
	p := (*int32)(unsafe.Pointer(reflect.ValueOf(cl).Elem().FieldByIndex(qtyField).UnsafeAddr()))
	return atomic.LoadInt32(p) > 0
}

// drainLag is a subscriber whose send queue has overflowed: it counts the
// PUBLISH packets written to it since, to tell when what was queued has
// gone out: when as many have been written as the queue held, or the
// queue is empty.
type drainLag struct {
	sent  atomic.Int64 // PUBLISH packets written to the subscriber since it overflowed
	next  atomic.Int64 // the lowest target of a waiter; MaxInt64 when none
	stuck atomic.Bool  // a wait for it timed out

	mu      sync.Mutex
	waiters []drainWaiter
}

type drainWaiter struct {
	target int64
	done   chan struct{}
}

const noTarget = int64(^uint64(0) >> 1)

func newDrainLag() *drainLag {
	l := &drainLag{}
	l.next.Store(noTarget)
	return l
}

// wait returns a channel closed once n more PUBLISH packets have been
// written.
func (l *drainLag) wait(n int64) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := drainWaiter{target: l.sent.Load() + n, done: make(chan struct{})}
	l.waiters = append(l.waiters, w)
	if w.target < l.next.Load() {
		l.next.Store(w.target)
	}
	return w.done
}

// written counts one PUBLISH written to cl and releases the waiters it
// satisfies.
func (l *drainLag) written(cl *mqtt.Client) {
	n := l.sent.Add(1)
	next := l.next.Load()
	if next == noTarget || n < next && queueLen(cl) > 0 {
		return
	}
	empty := queueLen(cl) == 0
	l.mu.Lock()
	defer l.mu.Unlock()
	next, kept := noTarget, l.waiters[:0]
	for _, w := range l.waiters {
		if w.target <= n || empty {
			close(w.done)
			continue
		}
		kept = append(kept, w)
		next = min(next, w.target)
	}
	l.waiters = kept
	l.next.Store(next)
	if len(kept) == 0 {
		l.stuck.Store(false) // it drains: wait for it again next time
	}
}

// OnPacketSent implements mqtt.Hook: counts PUBLISH packets written to a
// subscriber that overflowed. With none, it is one atomic load.
func (b *Backpressure) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if b.nDrain.Load() == 0 || pk.FixedHeader.Type != packets.Publish {
		return
	}
	if v, ok := b.drains.Load(cl); ok {
		v.(*drainLag).written(cl)
	}
}

// OnPublishDropped implements mqtt.Hook: the engine found cl's send queue
// full for pk. A QoS 0 message from a connected client waits for the queue
// to drain and is then written after it.
func (b *Backpressure) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	srv := b.srv.Load()
	if srv == nil || queueField == nil || pk.FixedHeader.Qos != 0 || pk.FixedHeader.Retain || cl.Net.Inline || cl.Closed() ||
		pk.Origin == "" || pk.Origin == mqtt.InlineClientId || pk.Origin == cl.ID {
		return
	}
	from, ok := srv.Clients.Get(pk.Origin)
	if !ok || from.Net.Inline || from.Closed() {
		return
	}
	out, ok := b.directCopy(srv, cl, pk)
	if !ok {
		return
	}
	v, loaded := b.drains.LoadOrStore(cl, newDrainLag())
	if !loaded {
		b.nDrain.Add(1)
	}
	l := v.(*drainLag)
	if l.stuck.Load() {
		return
	}
	listeners.FlushAcks(from.Net.Conn) // the PUBACKs of the packets before
	b.waits.Inc()
	start := time.Now()
	need := int64(srv.Options.Capabilities.MaximumClientWritesPending)
	done := l.wait(need)
	if unwritten(cl) { // else the writer has written the last one: nothing to wait for
		timer := time.NewTimer(b.maxWait)
		rounds := 0
		if !b.hold(done, timer, l.sent.Load, need, &rounds) {
			l.stuck.Store(true)
			b.timeouts.Inc()
			b.waited.Add(time.Since(start).Seconds())
			return
		}
		timer.Stop()
	}
	b.waited.Add(time.Since(start).Seconds())
	if cl.Closed() {
		return
	}
	if err := cl.WritePacket(out); err == nil {
		b.delivered.Inc()
		atomic.AddInt64(&srv.Info.MessagesDropped, -1) // it was not dropped after all
		atomic.AddInt64(&srv.Info.MessagesSent, 1)
	}
}

// directCopy is the QoS 0 packet the engine would have queued for cl:
// with an MQTT 5 client's subscription identifiers and its topic alias
// (the topic name is sent with it, so the client learns the alias even if
// the engine dropped the packet that would have told it).
func (b *Backpressure) directCopy(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) (packets.Packet, bool) {
	out := pk.Copy(false)
	out.FixedHeader.Retain = false
	if cl.Properties.ProtocolVersion < 5 {
		return out, true
	}
	sub, ok := srv.Topics.Subscribers(pk.TopicName).Subscriptions[cl.ID]
	if !ok {
		return out, false // a shared subscription: leave it to the engine
	}
	if len(sub.Identifiers) > 0 {
		out.Properties.SubscriptionIdentifier = make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id)
		}
		sort.Ints(out.Properties.SubscriptionIdentifier)
	}
	if cl.Properties.Props.TopicAliasMaximum > 0 {
		if alias, _ := cl.State.TopicAliases.Outbound.Set(pk.TopicName); alias > 0 {
			out.Properties.TopicAlias, out.Properties.TopicAliasFlag = alias, true
		}
	}
	return out, true
}

// forgetDrain drops cl's overflow state when it disconnects, releasing
// whoever waits for it.
func (b *Backpressure) forgetDrain(cl *mqtt.Client) {
	if b.nDrain.Load() == 0 {
		return
	}
	v, ok := b.drains.LoadAndDelete(cl)
	if !ok {
		return
	}
	b.nDrain.Add(-1)
	l := v.(*drainLag)
	l.mu.Lock()
	for _, w := range l.waiters {
		close(w.done)
	}
	l.waiters = nil
	l.mu.Unlock()
}
