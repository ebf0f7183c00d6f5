package broker

import (
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/logevery"
)

// Send queues in bytes. The engine's send queue per client
// (mqtt.client_queue_size) counts packets, and the engine puts its own
// copy of each message, payload included, in each subscriber's queue: 256
// messages of 1 MiB were 256 MiB for every subscriber that stops reading
// (ten such viewers took the heap to 3.2 GB in 25 s, before
// limits.write_timeout dropped them; they can reconnect). So a large QoS 0
// message (a payload of largeMessage bytes or more) going to a
// subscriber is counted against mqtt.client_queue_bytes (that client's
// queue) and mqtt.client_queue_total_bytes (all clients' queues together)
// when it is queued, and no longer once it is written (the gate's
// OnPacketEncode) or its client disconnects. A message past either bound
// is dropped for that subscriber alone, counted in
// tether_mqtt_messages_dropped_total{reason} and logged at most once a
// minute per client. A message alone in a client's queue always fits that
// client's own bound.
//
// The engine asks nothing of hooks between choosing a message's
// subscribers and copying it into their queues but the access check for
// each delivery (publishToClient), which gets the subscriber and the
// topic only. So the last OnPublish (sendQueueHook) records a large
// message under its topic string, which it gives a copy of its own (its
// address is the message's key while it is routed), and the access check
// (queuedACL, in front of the access hook and any Diverter) finds it
// there: it queues a copy for the subscriber that shares the payload,
// marked (Ignore, which no packet the engine writes has) so that the
// gate's OnPacketEncode knows what to release, and tells the engine no,
// so that the engine's own copy is thrown away rather than queued. What
// the engine would do otherwise (a QoS 1/2 delivery, a full queue, a
// subscription it cannot find) is left to the engine.
//
// A retained copy of a message shares its topic string, so a new
// subscription's retained delivery that comes while the same message is
// still being routed is taken for it (at most once per subscription the
// routing found): it goes out with the retain flag the routing gives.
//
// QoS 1/2 messages (sendqueue_qos12.go) are counted against the same
// bounds, from when the engine (or the session store's pump) puts them in
// a subscriber's in-flight store (OnQosPublish) until the subscriber
// acknowledges them or they are dropped from it: the engine keeps a copy
// of each, payload included, until then. One past a bound is not dropped:
// its publisher waits for the subscriber to acknowledge (slowed down, not
// dropped), and a subscriber that acknowledges nothing for a round of
// mqtt.backpressure_wait is stuck and disconnected (MQTT 5: DISCONNECT
// 0x97); its messages stay in its session if it is persistent.
//
// Left out: messages under largeMessage bytes (256 of them in a queue
// are at most 2 MiB).

const (
	// largeMessage: payloads from this size on are counted in send
	// queues' bytes.
	largeMessage = 8 << 10
	// ownTopicPayload: a PUBLISH with a payload from this size on gets a
	// topic string of its own (gate.read). The engine decodes a topic
	// without copying it, so the string points into the packet's buffer,
	// payload included, and each topic alias map (the publisher's, every
	// subscriber's) kept that buffer for as long as the client was
	// connected.
	ownTopicPayload = 4 << 10
	// sendQueueLogEvery: a client's drops are logged at most this often.
	sendQueueLogEvery = time.Minute
)

// Reasons a large QoS 0 message is dropped for a subscriber, as
// tether_mqtt_messages_dropped_total's reason label has them.
const (
	dropClientBytes = iota
	dropTotalBytes
	nDropReasons
)

var dropReasonNames = [nDropReasons]string{"client_queue_bytes", "client_queue_total_bytes"}

// sendQueue counts the bytes of large QoS 0 messages in the clients'
// send queues.
type sendQueue struct {
	srv       *mqtt.Server
	log       *slog.Logger
	logged    *logevery.Keys
	perClient int64 // mqtt.client_queue_bytes; 0 = no bound
	total     int64 // mqtt.client_queue_total_bytes; 0 = no bound

	bytes   atomic.Int64 // in all clients' queues
	clients sync.Map     // *mqtt.Client → *queueBytes
	dropped [nDropReasons]atomic.Int64
	// disconnected: subscribers disconnected for a bound, stuck with
	// QoS 1/2 messages (sendqueue_qos12.go).
	disconnected [nDropReasons]atomic.Int64
	// tracked: QoS 1/2 messages counted in all clients' in-flight
	// stores, so that an acknowledgement costs one atomic load while
	// there are none.
	tracked atomic.Int64
	// wait is a round of waiting for a QoS 1/2 subscriber past a bound
	// to acknowledge something (mqtt.backpressure_wait).
	wait time.Duration

	// routes: the large messages being routed, by their topic string's
	// address (*byte → *route); nRoutes how many, so that the access
	// check costs one atomic load while there are none.
	routes  sync.Map
	nRoutes atomic.Int64
	// last: each network publisher's last route, removed at its next
	// one if the engine never routed it (a QoS 1/2 acknowledgement that
	// could not be written ends processPublish without OnPublished).
	last sync.Map // *mqtt.Client → *route
}

func newSendQueue(srv *mqtt.Server, log *slog.Logger, perClient, total int64) *sendQueue {
	return &sendQueue{srv: srv, log: log, logged: logevery.New(sendQueueLogEvery), perClient: perClient, total: total, wait: time.Second}
}

// queueBytes is one client's bytes of large messages queued: QoS 0 ones
// in its send queue, QoS 1/2 ones in its in-flight store.
type queueBytes struct {
	mu     sync.Mutex
	n      int64
	closed bool // the client disconnected: nothing more is counted

	// inflight: the QoS 1/2 messages counted, by packet id.
	inflight map[uint16]int64
	// released is closed, and cleared, when bytes are released; made by
	// a publisher that waits for room.
	released chan struct{}
	stuck    bool // disconnected for a bound
	stuckFor int  // which: dropClientBytes or dropTotalBytes
}

// route is a large message being routed.
type route struct {
	key  *byte
	base packets.Packet // the message without its payload
	body []byte
	once sync.Once
	subs *mqtt.Subscribers // looked up on first need
}

// subscription is the subscription through which id gets r's message, as
// the engine finds it.
func (r *route) subscription(srv *mqtt.Server, id string) (packets.Subscription, bool) {
	r.once.Do(func() { r.subs = srv.Topics.Subscribers(r.base.TopicName) })
	if s, ok := r.subs.Subscriptions[id]; ok {
		return s, true
	}
	for _, group := range r.subs.Shared {
		if s, ok := group[id]; ok {
			return s, true
		}
	}
	return packets.Subscription{}, false
}

// publish records pk, if large, as being routed, and gives a QoS 0 one a
// topic string of its own, the route's key. For a small one it is a
// length check on the packet in place (hookSet calls it directly).
func (q *sendQueue) publish(cl *mqtt.Client, pk *packets.Packet) {
	if len(pk.Payload) < largeMessage || pk.TopicName == "" || queueField == nil || qtyField == nil {
		return
	}
	if pk.FixedHeader.Qos == 0 {
		pk.TopicName = strings.Clone(pk.TopicName)
	}
	// A QoS 1/2 message keeps the topic string it has: the session
	// store's OnPublish, before this one, gave it one of its own and keys
	// its routing by that string's address (sessions.Store.Divert, its
	// OnPublished); a second copy here hid the message from the store,
	// which then queued it for a persistent session that the engine
	// delivered it to as well (TestClusterDurableBurst: 57 of 96 delivered
	// twice). Without the store, a client's PUBLISH of this size already
	// has a topic string of its own (gate.read).
	r := &route{key: unsafe.StringData(pk.TopicName), base: *pk, body: pk.Payload}
	r.base.Payload = nil
	q.routes.Store(r.key, r)
	q.nRoutes.Add(1)
	if !cl.Net.Inline { // the inline client publishes from many goroutines at once
		if old, ok := q.last.Swap(cl, r); ok {
			q.unroute(old.(*route))
		}
	}
}

// published forgets pk's route: it has been routed.
func (q *sendQueue) published(cl *mqtt.Client, pk *packets.Packet) {
	if len(pk.Payload) < largeMessage || pk.TopicName == "" {
		return
	}
	v, ok := q.routes.Load(unsafe.StringData(pk.TopicName))
	if !ok {
		return
	}
	r := v.(*route)
	q.unroute(r)
	if !cl.Net.Inline {
		q.last.CompareAndDelete(cl, r)
	}
}

func (q *sendQueue) unroute(r *route) {
	if q.routes.CompareAndDelete(r.key, r) {
		q.nRoutes.Add(-1)
	}
}

// deliver is the access check's last word on a delivery of topic to cl
// that the access hook allowed: true lets the engine queue its copy;
// false means the message was queued here, or dropped for a bound.
func (q *sendQueue) deliver(cl *mqtt.Client, topic string) bool {
	if topic == "" {
		return true
	}
	v, ok := q.routes.Load(unsafe.StringData(topic))
	if !ok {
		return true
	}
	r := v.(*route)
	out, ok := q.copyFor(cl, r)
	if !ok {
		return true
	}
	ch := queue(cl)
	if len(ch) >= cap(ch) {
		return true // full: the engine drops it, and Backpressure may wait for room
	}
	size := int64(len(out.Payload))
	switch reason := q.admit(cl, size); reason {
	case admitted:
	case clientClosed:
		return false // the engine drops it too
	default:
		q.drop(cl, reason, size)
		return false
	}
	out.Ignore = true // marked for the gate's release
	// The topic alias as the engine gives it.
	if cl.Properties.Props.TopicAliasMaximum > 0 {
		alias, exists := cl.State.TopicAliases.Outbound.Set(r.base.TopicName)
		if alias > 0 {
			out.Properties.TopicAlias, out.Properties.TopicAliasFlag = alias, true
			if exists {
				out.TopicName = ""
			}
		}
	}
	select {
	case ch <- &out:
		queued(cl)
	default:
		// Filled meanwhile by another publisher: the alias may be new
		// (the engine would then send it without its topic), so the
		// message is dropped here, as the engine drops it.
		q.release(cl, size)
		atomic.AddInt64(&q.srv.Info.MessagesDropped, 1)
	}
	return false
}

// copyFor is the QoS 0 packet the engine would queue for cl, sharing r's
// payload, without its topic alias;
// false if it would not be QoS 0, or if cl's subscription is not found.
func (q *sendQueue) copyFor(cl *mqtt.Client, r *route) (packets.Packet, bool) {
	qos := r.base.FixedHeader.Qos
	var sub packets.Subscription
	if qos > 0 || r.base.FixedHeader.Retain || cl.Properties.ProtocolVersion == 5 {
		s, ok := r.subscription(q.srv, cl.ID)
		if !ok {
			return packets.Packet{}, false
		}
		sub, qos = s, min(qos, s.Qos)
	}
	if qos > 0 || cl.Closed() || cl.Net.Conn == nil {
		return packets.Packet{}, false
	}
	out := r.base.Copy(false)
	out.Payload = r.body
	out.FixedHeader.Qos = 0
	if !sub.FwdRetainedFlag && ((cl.Properties.ProtocolVersion == 5 && !sub.RetainAsPublished) || cl.Properties.ProtocolVersion < 5) {
		out.FixedHeader.Retain = false // [MQTT-3.3.1-12]
	}
	if len(sub.Identifiers) > 0 { // [MQTT-3.3.4-3]
		out.Properties.SubscriptionIdentifier = make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id)
		}
		sort.Ints(out.Properties.SubscriptionIdentifier)
	}
	return out, true
}

// claim counts out, a QoS 0 copy Backpressure queues for cl itself after
// the engine found cl's queue full, as deliver counts its own: counted
// says whether it was (a large message; then marked, and released by the
// gate when written, or by Backpressure if it is not queued after all),
// ok false that it is past a bound and dropped (counted and logged). A
// nil queue counts nothing.
func (q *sendQueue) claim(cl *mqtt.Client, out *packets.Packet) (counted, ok bool) {
	if q == nil || len(out.Payload) < largeMessage || out.FixedHeader.Qos > 0 {
		return false, true
	}
	size := int64(len(out.Payload))
	switch reason := q.admit(cl, size); reason {
	case admitted:
		out.Ignore = true
		return true, true
	case clientClosed:
		return false, false
	default:
		q.drop(cl, reason, size)
		return false, false
	}
}

// isQueued reports whether pk is a message this queue counted.
func isQueued(pk *packets.Packet) bool {
	return pk.Ignore && pk.FixedHeader.Type == packets.Publish && len(pk.Payload) >= largeMessage
}

// state is cl's count, made on first need; nil once cl has closed.
func (q *sendQueue) state(cl *mqtt.Client) *queueBytes {
	if v, ok := q.clients.Load(cl); ok {
		return v.(*queueBytes)
	}
	c := new(queueBytes)
	v, loaded := q.clients.LoadOrStore(cl, c)
	if !loaded && cl.Closed() { // its OnDisconnect may have come and gone
		q.clients.CompareAndDelete(cl, c)
		return nil
	}
	return v.(*queueBytes)
}

// What admit says besides a drop reason.
const (
	admitted     = -1
	clientClosed = -2
)

// admit counts size bytes queued for cl; it returns admitted, or
// clientClosed, or the reason it does not fit.
func (q *sendQueue) admit(cl *mqtt.Client, size int64) int {
	c := q.state(cl)
	if c == nil {
		return clientClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return q.admitLocked(c, size, false)
}

// admitLocked is admit with c locked; force counts size whatever the
// bounds.
func (q *sendQueue) admitLocked(c *queueBytes, size int64, force bool) int {
	if c.closed {
		return clientClosed
	}
	if !force && q.perClient > 0 && c.n > 0 && c.n+size > q.perClient {
		return dropClientBytes
	}
	if n := q.bytes.Add(size); !force && q.total > 0 && n > q.total {
		q.bytes.Add(-size)
		return dropTotalBytes
	}
	c.n += size
	return admitted
}

// release uncounts size bytes of cl's queue: written, or not queued.
func (q *sendQueue) release(cl *mqtt.Client, size int64) {
	v, ok := q.clients.Load(cl)
	if !ok {
		return
	}
	c := v.(*queueBytes)
	c.mu.Lock()
	c.releaseLocked(q, size)
	c.mu.Unlock()
}

// releaseLocked uncounts size bytes of c, and wakes whoever waits for
// room in it.
func (c *queueBytes) releaseLocked(q *sendQueue, size int64) {
	if !c.closed && c.n >= size {
		c.n -= size
		q.bytes.Add(-size)
	}
	if c.released != nil {
		close(c.released)
		c.released = nil
	}
}

// written releases what pk counted, if it is one of this queue's: the
// gate's OnPacketEncode calls it first of all, for every packet.
func (q *sendQueue) written(cl *mqtt.Client, pk *packets.Packet) {
	if pk.Ignore && isQueued(pk) {
		q.release(cl, int64(len(pk.Payload)))
	}
}

// forget uncounts what cl's queue holds when it disconnects, and empties
// the queue of its closed connection: a persistent session's client stays
// in the engine's index after its connection, with its queue, until it
// reconnects or expires, and nothing writes that queue any more (QoS 1/2
// messages are in its in-flight store, and resent from there).
func (q *sendQueue) forget(cl *mqtt.Client) {
	if v, ok := q.last.LoadAndDelete(cl); ok {
		q.unroute(v.(*route))
	}
	v, ok := q.clients.LoadAndDelete(cl)
	if !ok {
		return
	}
	c := v.(*queueBytes)
	c.mu.Lock()
	n := c.n
	c.n, c.closed = 0, true
	q.bytes.Add(-n)
	q.tracked.Add(-int64(len(c.inflight)))
	c.inflight = nil
	if c.released != nil {
		close(c.released)
		c.released = nil
	}
	c.mu.Unlock()
	if n == 0 || !cl.Closed() {
		return
	}
	ch := queue(cl)
	for {
		select {
		case <-ch:
			unqueued(cl)
		default:
			return
		}
	}
}

// drop counts and logs a message dropped for cl.
func (q *sendQueue) drop(cl *mqtt.Client, reason int, size int64) {
	q.dropped[reason].Add(1)
	if !q.logged.Allow(cl.ID, time.Now()) {
		return
	}
	bound, key := q.perClient, "mqtt.client_queue_bytes"
	if reason == dropTotalBytes {
		bound, key = q.total, "mqtt.client_queue_total_bytes"
	}
	q.log.Warn("large QoS 0 message dropped for a client whose send queue is full of bytes (logged at most once a minute per client)",
		"client", cl.ID, "bound", key, "bytes", bound, "size", size, "all_queues_bytes", q.bytes.Load())
}

// Dropped is how many large QoS 0 messages were dropped for
// mqtt.client_queue_bytes and for mqtt.client_queue_total_bytes.
func (q *sendQueue) Dropped(reason int) int64 { return q.dropped[reason].Load() }

// droppedAll is how many large QoS 0 messages were dropped for both
// bounds; 0 for a nil queue (both off).
func (q *sendQueue) droppedAll() int64 {
	if q == nil {
		return 0
	}
	return q.dropped[dropClientBytes].Load() + q.dropped[dropTotalBytes].Load()
}

// sendQueueHook is the last OnPublish: it records large messages as they
// are routed (sendQueue.publish), and forgets clients that disconnect.
type sendQueueHook struct {
	mqtt.HookBase
	q *sendQueue
}

func (h *sendQueueHook) ID() string { return "tether-sendqueue" }

func (h *sendQueueHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnPublished, mqtt.OnDisconnect,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped:
		return true
	}
	return false
}

// OnPublish implements mqtt.Hook.
func (h *sendQueueHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.q.publish(cl, &pk)
	return pk, nil
}

// OnPublished implements mqtt.Hook.
func (h *sendQueueHook) OnPublished(cl *mqtt.Client, pk packets.Packet) { h.q.published(cl, &pk) }

// OnDisconnect implements mqtt.Hook.
func (h *sendQueueHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.q.forget(cl) }

// OnQosPublish implements mqtt.Hook.
func (h *sendQueueHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	h.q.qosPublish(cl, &pk)
}

// OnQosComplete implements mqtt.Hook.
func (h *sendQueueHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.q.qosDone(cl, pk.PacketID)
}

// OnQosDropped implements mqtt.Hook.
func (h *sendQueueHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.q.qosDone(cl, pk.PacketID)
}

// queuedACL is the access hook (with any Diverter) with the send queue's
// delivery behind its delivery check.
type queuedACL struct {
	mqtt.Hook
	q *sendQueue
}

// Provides implements mqtt.Hook.
func (h *queuedACL) Provides(b byte) bool { return b == mqtt.OnACLCheck || h.Hook.Provides(b) }

// OnACLCheck implements mqtt.Hook.
func (h *queuedACL) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := h.Hook.Provides(mqtt.OnACLCheck) && h.Hook.OnACLCheck(cl, topic, write)
	if !ok || write || h.q.nRoutes.Load() == 0 {
		return ok
	}
	return h.q.deliver(cl, topic)
}

// ProvidesVaries passes on the wrapped hook's answer (see
// Retained.ProvidesVaries).
func (h *queuedACL) ProvidesVaries() bool {
	v, ok := h.Hook.(interface{ ProvidesVaries() bool })
	return ok && v.ProvidesVaries()
}
