package broker

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices/topic"
	"github.com/tether-iot/tether/listeners"
)

// Backpressure slows QoS 1/2 publishers down for a subscriber that has
// fallen behind, instead of letting the engine drop its messages.
//
// The engine acknowledges a QoS 1/2 PUBLISH before it routes it, and a
// message for a subscriber whose in-flight store is full
// (mqtt.max_inflight) or whose send queue is full (mqtt.client_queue_size)
// is then dropped: the publisher has its PUBACK, the subscriber never sees
// the message. No finite bound survives a sustained rate mismatch (ten
// publishers into one subscriber), so instead the publisher waits:
// OnPublish runs on the publisher's reading goroutine before its PUBACK,
// and if the message goes to a subscriber above its high-water mark (three
// quarters of the smaller of the two bounds), it waits until that
// subscriber has drained to half of the mark. The publisher's socket
// buffers then fill and TCP slows the sender, as with
// limits.publish_rate_per_client.
//
// The wait is bounded. It goes in rounds of maxWait (mqtt.backpressure_wait):
// a subscriber that drained at least an eighth of what is waited for in
// a round is slow, not stuck, and is waited for another round, at most
// WaitRounds in all per PUBLISH (one that keeps that pace drains in
// them); one that drained less is marked stuck and not waited for again
// until it drains, or has acknowledged as many messages as that takes
// (drain), so a client that never reads costs each publisher at most one
// maxWait and then its messages are dropped as before (the engine counts
// them). A slow subscriber thus holds its publishers to its
// pace, down to an eighth of its high-water mark per maxWait (12 messages
// a second at the defaults), rather than losing acknowledged messages
// whenever it is slower for a moment (a loaded machine) than draining
// half its high-water mark in one maxWait. A publisher never waits for itself, and shared
// subscriptions are not considered. The broker's own inline publishes
// never wait; the messages another node of a cluster sends do (their
// injecting client's listener is BusListener): the wait holds the bus's
// delivery to this node, whose NATS subscription buffers meanwhile,
// instead of dropping them at a slow subscriber. QoS 0 messages have no
// acknowledgement to hold back: they wait when the engine finds a
// subscriber's send queue full (backpressure_qos0.go; from connected
// clients only, not from the bus). Waits, time waited and timeouts are
// counted in /metrics.
type Backpressure struct {
	mqtt.HookBase

	srv     atomic.Pointer[mqtt.Server]
	maxWait time.Duration

	// behind holds the subscribers above their high-water mark.
	behind  sync.Map // *mqtt.Client -> *lag
	nBehind atomic.Int64

	// drains holds the subscribers whose send queue has overflowed with a
	// QoS 0 message (backpressure_qos0.go).
	drains sync.Map // *mqtt.Client -> *drainLag
	nDrain atomic.Int64

	// sendq counts what it queues itself in bytes, as the broker's
	// deliveries are (sendqueue.go); set by broker.New, nil if off.
	sendq *sendQueue

	waits, waited, timeouts, delivered prometheus.Counter
}

// lag is one subscriber that has fallen behind.
type lag struct {
	low     int           // drained at or below this many in flight
	drained chan struct{} // closed when it has drained
	once    sync.Once
	stuck   atomic.Bool  // a wait for it timed out
	acks    atomic.Int64 // acknowledgements (or drops) since it fell behind
	need    int64        // how many it drains from its high-water mark to low
	resume  atomic.Int64 // once stuck: waited for again when acks reach this

	// filters are the subscriber's QoS 1/2 filters when it fell behind
	// (shared ones left out), to tell without the engine's index whether
	// a message goes to it; nil with more than maxLagFilters, and then
	// the engine's index decides.
	filters []string
}

const maxLagFilters = 16

func newLag(cl *mqtt.Client, high int) *lag {
	l := &lag{low: high / 2, need: int64(high - high/2), drained: make(chan struct{})}
	subs := cl.State.Subscriptions.GetAll()
	if len(subs) <= maxLagFilters {
		l.filters = make([]string, 0, len(subs))
		for f, sub := range subs {
			if sub.Qos > 0 && !mqtt.IsSharedFilter(f) {
				l.filters = append(l.filters, f)
			}
		}
	}
	return l
}

// goesTo reports whether a QoS 1/2 message on name reaches the lagging
// subscriber to. subs is the engine's answer, looked up once per PUBLISH
// if needed.
func (l *lag) goesTo(srv *mqtt.Server, to *mqtt.Client, name string, subs **mqtt.Subscribers) bool {
	if l.filters != nil {
		for _, f := range l.filters {
			if topic.Match(f, name) {
				return true
			}
		}
		return false
	}
	if *subs == nil {
		*subs = srv.Topics.Subscribers(name)
	}
	sub, ok := (*subs).Subscriptions[to.ID]
	return ok && sub.Qos > 0
}

// NewBackpressure returns the hook (mqtt.backpressure_wait): maxWait is
// the longest one PUBLISH is held back; 0 turns it off (the hook then
// does nothing). Add it to the broker with Options.Hooks, then call
// Attach with the broker's engine.
func NewBackpressure(maxWait time.Duration) *Backpressure {
	return &Backpressure{
		maxWait: maxWait,
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_backpressure_waits_total",
			Help: "PUBLISH packets held back because a subscriber was behind (QoS 1/2: before the acknowledgement; QoS 0: its send queue was full)."}),
		waited: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_backpressure_wait_seconds_total",
			Help: "Time publishers were held back for subscribers that were behind."}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_backpressure_timeouts_total",
			Help: "Waits for a subscriber that did not drain in time; it is skipped until it drains."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_backpressure_qos0_delivered_total",
			Help: "QoS 0 messages that found a subscriber's send queue full and were delivered after it drained."}),
	}
}

// Attach gives the hook the engine whose subscribers it watches.
func (b *Backpressure) Attach(srv *mqtt.Server) { b.srv.Store(srv) }

// ID implements mqtt.Hook.
func (b *Backpressure) ID() string { return "tether-backpressure" }

// ProvidesVaries tells an engine that lists hooks per event once (a
// proposed mochi change, docs/upstream.md section 4) that Provides
// changes at run time (OnPublish, OnPacketSent) and must be asked before
// each call.
func (b *Backpressure) ProvidesVaries() bool { return true }

// Provides implements mqtt.Hook.
func (b *Backpressure) Provides(e byte) bool {
	if b.maxWait <= 0 {
		return false
	}
	switch e {
	case mqtt.OnPublish:
		// The engine asks before each call, and hands every hook that
		// provides an event its own copy of the packet (800 bytes, in and
		// out): with nobody behind OnPublish has nothing to do, so it is
		// not provided (BenchmarkHookDispatch). A subscriber that falls
		// behind between this answer and the call is missed as it would be
		// by OnPublish's own first load.
		return b.nBehind.Load() > 0
	case mqtt.OnPacketSent:
		return b.nDrain.Load() > 0 // the same, for the QoS 0 drains
	case mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnDisconnect,
		mqtt.OnPublishDropped:
		return true
	}
	return false
}

// idle reports whether OnPublish has nothing to do for pk: nobody is
// behind, or pk is one it does not hold back.
func (b *Backpressure) idle(cl *mqtt.Client, pk *packets.Packet) bool {
	return b.nBehind.Load() == 0 || pk.FixedHeader.Qos == 0 || cl.Net.Inline && cl.Net.Listener != BusListener
}

// publish is OnPublish for the packet by pointer (hookSet): the packet
// is copied only for a message held back.
func (b *Backpressure) publish(cl *mqtt.Client, pk *packets.Packet) error {
	if b.idle(cl, pk) {
		return nil
	}
	npk, err := b.OnPublish(cl, *pk)
	*pk = npk
	return err
}

// highWater is the number of messages in flight to cl above which
// publishers wait for it. The engine's in-flight store holds every QoS 1/2
// message not yet acknowledged, including those still in the send queue
// (unless the client's Receive Maximum holds them back, and then at most
// that many are queued).
// BusListener is the listener name of the inline client through which a
// cluster node injects the messages of the other nodes (cluster/).
const BusListener = "cluster"

func highWater(cl *mqtt.Client, caps *mqtt.Capabilities) int {
	n := int(caps.MaximumInflight)
	if rm := int(cl.Properties.Props.ReceiveMaximum); rm == 0 || rm > int(caps.MaximumClientWritesPending) {
		n = min(n, int(caps.MaximumClientWritesPending))
	}
	return max(n*3/4, 1)
}

// OnQosPublish notes a subscriber that has gone above its high-water mark.
// The engine calls it on the publisher's goroutine as it queues a message.
func (b *Backpressure) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || cl.Closed() {
		return // an offline session's messages wait in its store, not in a queue
	}
	high := highWater(cl, b.Opts.Capabilities)
	if cl.State.Inflight.Len() < high {
		return
	}
	if _, ok := b.behind.Load(cl); ok {
		return
	}
	if _, loaded := b.behind.LoadOrStore(cl, newLag(cl, high)); !loaded {
		b.nBehind.Add(1)
	}
}

// drain releases the publishers waiting for cl once it is at or below its
// low-water mark, or gone. A subscriber marked stuck is forgotten once it
// has acknowledged need more messages: publishers that kept its
// in-flight store full meanwhile (nobody waits for it) would otherwise
// keep it from ever reaching its low-water mark, and a live subscriber
// taken for stuck in one slow round would lose everything past its store
// for as long as they publish. Forgotten, it is above its high-water mark
// and waited for again, from the next message it is sent.
func (b *Backpressure) drain(cl *mqtt.Client, gone bool) {
	if b.nBehind.Load() == 0 {
		return
	}
	v, ok := b.behind.Load(cl)
	if !ok {
		return
	}
	l := v.(*lag)
	n := l.acks.Add(1)
	if !gone && cl.State.Inflight.Len() > l.low && !(l.stuck.Load() && n >= l.resume.Load()) {
		return
	}
	if b.behind.CompareAndDelete(cl, l) {
		b.nBehind.Add(-1)
	}
	l.once.Do(func() { close(l.drained) })
}

// OnQosComplete implements mqtt.Hook: a subscriber acknowledged a message.
func (b *Backpressure) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { b.drain(cl, false) }

// OnQosDropped implements mqtt.Hook: a message in flight was abandoned.
func (b *Backpressure) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { b.drain(cl, false) }

// OnDisconnect implements mqtt.Hook: nobody waits for a client that left.
func (b *Backpressure) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	b.drain(cl, true)
	b.forgetDrain(cl)
}

// OnPublish holds a QoS 1/2 PUBLISH back, before its acknowledgement,
// while a subscriber it goes to is behind; at most maxWait in all. With
// nobody behind it is one atomic load.
func (b *Backpressure) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if b.idle(cl, &pk) {
		return pk, nil
	}
	srv := b.srv.Load()
	if srv == nil {
		return pk, nil
	}
	var subs *mqtt.Subscribers
	var timer *time.Timer
	var start time.Time
	rounds := 0
	b.behind.Range(func(k, v any) bool {
		to, l := k.(*mqtt.Client), v.(*lag)
		if to == cl || to.ID == cl.ID || l.stuck.Load() || to.Closed() {
			return true
		}
		if !l.goesTo(srv, to, pk.TopicName, &subs) {
			return true
		}
		if timer == nil {
			listeners.FlushAcks(cl.Net.Conn) // the PUBACKs of the packets before
			start = time.Now()
			timer = time.NewTimer(b.maxWait)
			b.waits.Inc()
		}
		drained := func(round <-chan time.Time) bool {
			select {
			case <-l.drained:
				return true
			case <-round:
				return false
			}
		}
		if b.hold(drained, timer, l.acks.Load, l.need, &rounds) {
			return true
		}
		l.resume.Store(l.acks.Load() + l.need)
		l.stuck.Store(true)
		b.timeouts.Inc()
		return false
	})
	if timer != nil {
		timer.Stop()
		b.waited.Add(time.Since(start).Seconds())
	}
	return pk, nil
}

// WaitRounds is the most rounds of maxWait one PUBLISH is held back for
// subscribers that drain slowly: one that drains an eighth of what is
// waited for in each round has drained it all within them. (The cluster
// waits as long for a node held back so: cluster/flow.go.)
const WaitRounds = 8

// hold waits until done reports true, in rounds of maxWait timed by
// timer (started by the caller, shared by the subscribers one PUBLISH
// waits for): done waits for its event or for round to fire, and reports
// which. A round at whose end progress (a count of what the subscriber
// has drained) has not advanced by an eighth of need ends the wait, as
// does the last of WaitRounds rounds (rounds counts them across the
// PUBLISH's subscribers): false, the subscriber is stuck.
func (b *Backpressure) hold(done func(round <-chan time.Time) bool, timer *time.Timer, progress func() int64, need int64, rounds *int) bool {
	floor := max(need/WaitRounds, 1)
	seen := progress()
	for {
		if done(timer.C) {
			return true
		}
		*rounds++
		now := progress()
		if now-seen < floor || *rounds >= WaitRounds {
			return false
		}
		seen = now
		timer.Reset(b.maxWait)
	}
}

// WaitsCounter is tether_backpressure_waits_total, for tests.
func (b *Backpressure) WaitsCounter() prometheus.Counter { return b.waits }

// Describe implements prometheus.Collector.
func (b *Backpressure) Describe(ch chan<- *prometheus.Desc) {
	b.waits.Describe(ch)
	b.waited.Describe(ch)
	b.timeouts.Describe(ch)
	b.delivered.Describe(ch)
}

// Collect implements prometheus.Collector.
func (b *Backpressure) Collect(ch chan<- prometheus.Metric) {
	b.waits.Collect(ch)
	b.waited.Collect(ch)
	b.timeouts.Collect(ch)
	b.delivered.Collect(ch)
}
