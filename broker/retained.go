package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices/topic"
)

// Retained delivers the retained messages a SUBSCRIBE asks for even when
// there are more of them than the client's send queue holds.
//
// The engine sends a new subscription's retained messages through the
// client's send queue (mqtt.client_queue_size slots) without waiting, so a
// dashboard subscribing to devices/+/status of 10,000 devices got a few
// hundred of them and the rest were dropped. The engine does this on the
// subscribing client's own goroutine, between OnSubscribed and the end
// of the SUBSCRIBE's processing (OnPacketProcessed); in that window this
// hook writes each retained message
// the queue could not take straight to the client's connection, which
// blocks only that client's own goroutine until its socket accepts it.
// QoS 1/2 messages get a packet id and an in-flight record as the engine
// would give them.
type Retained struct {
	mqtt.HookBase
	srv atomic.Pointer[mqtt.Server]

	// subscribing maps a client in that window to its SUBSCRIBE filters.
	subscribing sync.Map // *mqtt.Client -> []packets.Subscription
	// open counts the windows, so that OnPacketProcessed costs one atomic
	// load when none is open.
	open atomic.Int64

	written prometheus.Counter
}

// NewRetained returns the hook; Attach it to the engine once built.
func NewRetained() *Retained {
	return &Retained{written: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_retained_overflow_written_total",
		Help: "Retained messages for a new subscription written directly because the client's send queue was full.",
	})}
}

// Attach gives the hook the engine it serves.
func (r *Retained) Attach(srv *mqtt.Server) { r.srv.Store(srv) }

// ID implements mqtt.Hook.
func (r *Retained) ID() string { return "tether-retained" }

// ProvidesVaries tells an engine that lists hooks per event once (a
// proposed mochi change, docs/upstream.md section 4) that Provides
// changes at run time (OnPacketProcessed) and must be asked before each
// call.
func (r *Retained) ProvidesVaries() bool { return true }

// Provides implements mqtt.Hook.
func (r *Retained) Provides(b byte) bool {
	switch b {
	case mqtt.OnPacketProcessed:
		// Asked after every packet processed: provided only while a window
		// is open, so that the engine does not copy each packet into a
		// hook that has nothing to do (BenchmarkHookDispatch). A window
		// opens and closes within the processing of one SUBSCRIBE, on the
		// client's own goroutine.
		return r.open.Load() > 0
	case mqtt.OnSubscribed, mqtt.OnPublishDropped, mqtt.OnDisconnect:
		return true
	}
	return false
}

// OnSubscribed opens the window: the engine publishes the retained
// messages next, on this goroutine.
func (r *Retained) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	var subs []packets.Subscription
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			subs = append(subs, f)
		}
	}
	if len(subs) > 0 {
		if _, loaded := r.subscribing.Swap(cl, subs); !loaded {
			r.open.Add(1)
		}
	}
}

// OnPacketProcessed closes the window as the engine is done with the
// SUBSCRIBE: it calls it after it has sent the retained messages
// (mochi's Server.processPacket, after processSubscribe). Closed then,
// not at the client's next packet, the window is open only while a
// SUBSCRIBE is being answered: a subscriber that sends nothing more (one
// that only receives, until its next PINGREQ) kept it open, and made
// every other client's packet pay this hook's call and a map lookup
// (TestSubscribeWindowsClose).
func (r *Retained) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if pk.FixedHeader.Type == packets.Subscribe {
		r.close(cl)
	}
}

// OnDisconnect forgets the client.
func (r *Retained) OnDisconnect(cl *mqtt.Client, err error, expire bool) { r.close(cl) }

func (r *Retained) close(cl *mqtt.Client) {
	if r.open.Load() == 0 {
		return
	}
	if _, ok := r.subscribing.LoadAndDelete(cl); ok {
		r.open.Add(-1)
	}
}

// OnPublishDropped writes a retained message the send queue refused while
// cl's SUBSCRIBE is being answered.
func (r *Retained) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if !pk.FixedHeader.Retain || cl.Closed() {
		return
	}
	v, ok := r.subscribing.Load(cl)
	srv := r.srv.Load()
	if !ok || srv == nil {
		return
	}
	qos, match := byte(0), false
	for _, s := range v.([]packets.Subscription) {
		if topic.Match(unshare(s.Filter), pk.TopicName) {
			match = true
			qos = max(qos, s.Qos)
		}
	}
	if !match {
		return
	}
	out := pk.Copy(false)
	out.FixedHeader.Retain = true // a retained message sent for a new subscription [MQTT-3.3.1-8]
	out.FixedHeader.Qos = min(pk.FixedHeader.Qos, qos, srv.Options.Capabilities.MaximumQos)
	if out.FixedHeader.Qos > 0 {
		id, err := cl.NextPacketID()
		if err != nil {
			return
		}
		out.PacketID = uint16(id)
		if cl.State.Inflight.Set(out) {
			atomic.AddInt64(&srv.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
	}
	if err := cl.WritePacket(out); err == nil {
		r.written.Inc()
		atomic.AddInt64(&srv.Info.MessagesDropped, -1) // it was not dropped after all
	}
}

// Describe implements prometheus.Collector.
func (r *Retained) Describe(ch chan<- *prometheus.Desc) { r.written.Describe(ch) }

// Collect implements prometheus.Collector.
func (r *Retained) Collect(ch chan<- prometheus.Metric) { r.written.Collect(ch) }
