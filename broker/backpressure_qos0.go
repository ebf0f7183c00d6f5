package broker

import (
	"reflect"
	"sort"
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
// the publisher's reading goroutine), the publisher waits for room in
// the subscriber's send queue and puts the message there itself, after
// everything queued before it: the queue is first in, first out, so the
// subscriber gets the publisher's messages in order, and its later
// messages wait for this one. The publisher's socket buffers fill
// meanwhile and TCP slows it down, as for QoS 1. (It used to wait until
// as many packets had been written as the queue holds and then write the
// message to the connection itself; that left out the packet the writer
// held, and the message went out before the queue's last packet when the
// writer was slow to take it.)
//
// The same bound applies, per subscriber found full (the hook does not see
// where one PUBLISH's routing ends): rounds of maxWait, another while the
// subscriber writes an eighth of the queue in each, at most WaitRounds
// (backpressure.go); a subscriber that does not drain in time is marked
// stuck and then dropped for (the engine's counting) until it has written
// a queue's worth or emptied its queue. Retained messages (Retained
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
	if !ok || q.Type != reflect.TypeFor[chan *packets.Packet]() {
		return nil
	}
	return append(f.Index, q.Index...)
}()

// queueLen is the number of packets in cl's send queue.
func queueLen(cl *mqtt.Client) int {
	return reflect.ValueOf(cl).Elem().FieldByIndex(queueField).Len()
}

// queue is cl's send queue.
func queue(cl *mqtt.Client) chan *packets.Packet {
	return *(*chan *packets.Packet)(unsafe.Pointer(reflect.ValueOf(cl).Elem().FieldByIndex(queueField).UnsafeAddr()))
}

// qtyField is the index of the engine's count of cl's queued packets
// (State.outboundQty), which it raises after queuing a packet and its
// writer lowers once it has written it; nil if this engine version has
// none, and then QoS 0 messages are dropped as the engine does.
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

// queued counts a packet put on cl's send queue, as the engine does.
func queued(cl *mqtt.Client) {
	atomic.AddInt32((*int32)(unsafe.Pointer(reflect.ValueOf(cl).Elem().FieldByIndex(qtyField).UnsafeAddr())), 1)
}

// unqueued counts a packet taken off cl's send queue, as its writer does.
func unqueued(cl *mqtt.Client) {
	atomic.AddInt32((*int32)(unsafe.Pointer(reflect.ValueOf(cl).Elem().FieldByIndex(qtyField).UnsafeAddr())), -1)
}

// drainLag is a subscriber whose send queue has overflowed: it counts the
// PUBLISH packets written to it since, the progress a wait for it looks
// for.
type drainLag struct {
	sent   atomic.Int64  // PUBLISH packets written to the subscriber since it overflowed
	stuck  atomic.Bool   // a wait for it timed out
	resume atomic.Int64  // once stuck: waited for again when sent reaches this
	gone   chan struct{} // closed when the subscriber disconnects
}

func newDrainLag() *drainLag { return &drainLag{gone: make(chan struct{})} }

// written counts one PUBLISH written to cl; a stuck subscriber that has
// written a queue's worth since, or emptied its queue, is waited for
// again.
func (l *drainLag) written(cl *mqtt.Client) {
	n := l.sent.Add(1)
	if l.stuck.Load() && (n >= l.resume.Load() || queueLen(cl) == 0) {
		l.stuck.Store(false)
	}
}

// OnPacketSent implements mqtt.Hook: counts PUBLISH packets written to a
// subscriber that overflowed. With none, it is one atomic load.
func (b *Backpressure) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	b.packetSent(cl, &pk)
}

// packetSent is OnPacketSent for the packet by pointer (hookSet).
func (b *Backpressure) packetSent(cl *mqtt.Client, pk *packets.Packet) {
	if b.nDrain.Load() == 0 || pk.FixedHeader.Type != packets.Publish {
		return
	}
	if v, ok := b.drains.Load(cl); ok {
		v.(*drainLag).written(cl)
	}
}

// OnPublishDropped implements mqtt.Hook: the engine found cl's send queue
// full for pk. A QoS 0 message from a connected client waits for room in
// the queue and is then queued.
func (b *Backpressure) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	srv := b.srv.Load()
	if srv == nil || queueField == nil || qtyField == nil || pk.FixedHeader.Qos != 0 || pk.FixedHeader.Retain || cl.Net.Inline || cl.Closed() ||
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
	counted, ok := b.sendq.claim(cl, &out)
	if !ok {
		return // past a byte bound of the send queue: dropped for cl, and counted
	}
	listeners.FlushAcks(from.Net.Conn) // the PUBACKs of the packets before
	b.waits.Inc()
	start := time.Now()
	need := int64(srv.Options.Capabilities.MaximumClientWritesPending)
	q, put := queue(cl), false
	timer := time.NewTimer(b.maxWait)
	rounds := 0
	held := b.hold(func(round <-chan time.Time) bool {
		select {
		case q <- &out:
			put = true
			return true
		case <-l.gone:
			return true
		case <-round:
			return false
		}
	}, timer, l.sent.Load, need, &rounds)
	timer.Stop()
	b.waited.Add(time.Since(start).Seconds())
	if !put && counted {
		b.sendq.release(cl, int64(len(out.Payload)))
	}
	if !held {
		l.resume.Store(l.sent.Load() + need)
		l.stuck.Store(true)
		b.timeouts.Inc()
		return
	}
	if put {
		queued(cl)
		b.delivered.Inc()
		atomic.AddInt64(&srv.Info.MessagesDropped, -1) // it was not dropped after all
	}
}

// directCopy is the QoS 0 packet the engine would have queued for cl
// (sharing pk's payload):
// with an MQTT 5 client's subscription identifiers and its topic alias
// (the topic name is sent with it, so the client learns the alias even if
// the engine dropped the packet that would have told it).
func (b *Backpressure) directCopy(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) (packets.Packet, bool) {
	body := pk.Payload // shared, as the send queue's copies share it: nothing writes it
	pk.Payload = nil
	out := pk.Copy(false)
	out.Payload = body
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
	close(v.(*drainLag).gone)
}
