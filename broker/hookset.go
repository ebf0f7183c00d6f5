package broker

import (
	"errors"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// hookSet is Tether's hooks as one engine hook. The engine (mochi's
// Hooks) asks every hook's Provides before each call of each event and
// copies the 800-byte packet into and out of every hook that provides it:
// with a dozen hooks that was about half of what the hooks cost per QoS 0
// message (BenchmarkRoutedQoS0Hooks, docs/PERFORMANCE.md, issue 17).
// The engine now has one hook, this one, which calls Tether's hooks in
// the order they were added with the engine's semantics event by event:
//
//   - the per-message events (hotEvents) go through lists made once, by
//     build: a hook is on an event's list if it provides the event then,
//     or if its answer may change (ProvidesVaries, asked before each call
//     as the engine asks); the packet is passed by pointer to the hooks
//     of this package that have a method for it (the ref functions
//     below), by value to the others, as the engine would;
//   - every other event goes through mochi's own Hooks holding the same
//     hooks in the same order: the engine's code, the engine's semantics.
//
// Hooks are added with add, before build; the engine gets the set once
// built.
type hookSet struct {
	mqtt.HookBase
	hooks *mqtt.Hooks
	// on lists, per hot event, the hooks that may provide it.
	on [nEvents][]hookEntry
	// always: a hook whose answer does not vary provides the event.
	always [nEvents]bool
}

const nEvents = int(mqtt.StoredSysInfo) + 1

// hotEvents are the events the engine has per message; hookSet decides
// once which hooks provide them.
var hotEvents = [...]byte{
	mqtt.OnPacketRead, mqtt.OnPacketEncode, mqtt.OnPacketSent, mqtt.OnPacketProcessed,
	mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnPublishDropped, mqtt.OnSelectSubscribers,
	mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
}

var isHot = func() (hot [nEvents]bool) {
	for _, e := range hotEvents {
		hot[e] = true
	}
	return
}()

// hookEntry is a hook on an event's list.
type hookEntry struct {
	h mqtt.Hook
	// ask: the hook's answer may change (ProvidesVaries); the engine's
	// rule, Provides before each call, applies.
	ask bool
	// skipQoS0: the hook's method for the event does nothing for a QoS 0
	// PUBLISH (qos0Skipper).
	skipQoS0 bool
}

// varies reports whether h's Provides may change its answer at run time
// (see Retained.ProvidesVaries).
func varies(h mqtt.Hook) bool {
	v, ok := h.(interface{ ProvidesVaries() bool })
	return ok && v.ProvidesVaries()
}

// qos0Skipper is a hook whose method for an event returns at once,
// changing nothing, for a QoS 0 PUBLISH: the set does not call it for
// one. It is asked once, by build.
type qos0Skipper interface {
	SkipsQoS0(event byte) bool
}

func newHookSet(log *slog.Logger) *hookSet {
	return &hookSet{hooks: &mqtt.Hooks{Log: log}}
}

// add adds h as the engine's Server.AddHook would: its options, then its
// Init.
func (s *hookSet) add(srv *mqtt.Server, h mqtt.Hook) error {
	h.SetOpts(srv.Log.With("hook", h.ID()), &mqtt.HookOptions{Capabilities: srv.Options.Capabilities})
	srv.Log.Info("added hook", "hook", h.ID())
	return s.hooks.Add(h, nil)
}

// build makes the hot events' lists, once every hook has been added and
// has its settings (gate.reads, PublishLimit.levels, ...).
func (s *hookSet) build() {
	for _, h := range s.hooks.GetAll() {
		ask := varies(h)
		for _, e := range hotEvents {
			// The access hook's wrappers (diverted, queuedACL) change
			// only the access check: the other events go straight to
			// the hook they wrap.
			c := h
			if e != mqtt.OnACLCheck {
				c = unwrapACL(h)
			}
			if !ask && !h.Provides(e) {
				continue
			}
			sk, ok := c.(qos0Skipper)
			s.on[e] = append(s.on[e], hookEntry{h: c, ask: ask, skipQoS0: ok && sk.SkipsQoS0(e)})
			if !ask {
				s.always[e] = true
			}
		}
	}
}

// unwrapACL returns the hook that h, the access hook with wrappers around
// its access check, wraps.
func unwrapACL(h mqtt.Hook) mqtt.Hook {
	for {
		switch w := h.(type) {
		case *queuedACL:
			h = w.Hook
		case *diverted:
			h = w.Hook
		default:
			return h
		}
	}
}

// ID implements mqtt.Hook.
func (s *hookSet) ID() string { return "tether-hooks" }

// Provides implements mqtt.Hook: a hot event is provided when a hook
// whose answer is fixed provides it, or one whose answer varies provides
// it now; any other, as mochi's Hooks answers.
func (s *hookSet) Provides(e byte) bool {
	if int(e) >= nEvents || !isHot[e] {
		return s.hooks.Provides(e)
	}
	if s.always[e] {
		return true
	}
	for i := range s.on[e] {
		if s.on[e][i].h.Provides(e) {
			return true
		}
	}
	return false
}

// Stop implements mqtt.Hook: each hook's Stop, in order.
func (s *hookSet) Stop() error {
	s.hooks.Stop()
	return nil
}

// live reports whether the entry's hook is to be called for e now.
func (en *hookEntry) live(e byte) bool { return !en.ask || en.h.Provides(e) }

// OnPacketRead implements mqtt.Hook as mochi's Hooks.OnPacketRead: each
// hook gets the packet the one before returned; ErrRejectPacket stops
// and rejects the packet, another error skips that hook's result.
func (s *hookSet) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	for i := range s.on[mqtt.OnPacketRead] {
		en := &s.on[mqtt.OnPacketRead][i]
		if !en.live(mqtt.OnPacketRead) {
			continue
		}
		var err error
		if !readRef(en.h, cl, &pk, &err) {
			var npk packets.Packet
			if npk, err = en.h.OnPacketRead(cl, pk); err == nil {
				pk = npk
			}
		}
		if err != nil && errors.Is(err, packets.ErrRejectPacket) {
			s.hooks.Log.Debug("packet rejected", "hook", en.h.ID(), "packet", pk)
			return pk, err // the engine goes on with the packet it had
		}
	}
	return pk, nil
}

// OnPublish implements mqtt.Hook as mochi's Hooks.OnPublish: each hook
// gets the packet the one before returned; the first error stops, and the
// engine then goes on with the packet it had before any hook.
func (s *hookSet) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	qos0 := pk.FixedHeader.Qos == 0
	for i := range s.on[mqtt.OnPublish] {
		en := &s.on[mqtt.OnPublish][i]
		if qos0 && en.skipQoS0 || !en.live(mqtt.OnPublish) {
			continue
		}
		var err error
		if !publishRef(en.h, cl, &pk, &err) {
			var npk packets.Packet
			if npk, err = en.h.OnPublish(cl, pk); err == nil {
				pk = npk
			}
		}
		if err != nil {
			if !errors.Is(err, packets.ErrRejectPacket) && !errors.Is(err, packets.CodeSuccessIgnore) {
				// The engine logs it too, as this hook's; this line
				// names the one that returned it.
				s.hooks.Log.Debug("publish packet error", "hook", en.h.ID(), "error", err)
			}
			return pk, err
		}
	}
	return pk, nil
}

// OnPublished implements mqtt.Hook.
func (s *hookSet) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	qos0 := pk.FixedHeader.Qos == 0
	for i := range s.on[mqtt.OnPublished] {
		en := &s.on[mqtt.OnPublished][i]
		if qos0 && en.skipQoS0 || !en.live(mqtt.OnPublished) {
			continue
		}
		if !publishedRef(en.h, cl, &pk) {
			en.h.OnPublished(cl, pk)
		}
	}
}

// OnACLCheck implements mqtt.Hook as mochi's Hooks.OnACLCheck: the first
// hook that allows decides; none, refused.
func (s *hookSet) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	for i := range s.on[mqtt.OnACLCheck] {
		en := &s.on[mqtt.OnACLCheck][i]
		if en.live(mqtt.OnACLCheck) && en.h.OnACLCheck(cl, topic, write) {
			return true
		}
	}
	return false
}

// OnPacketEncode implements mqtt.Hook: each hook gets the packet the one
// before returned.
func (s *hookSet) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	for i := range s.on[mqtt.OnPacketEncode] {
		en := &s.on[mqtt.OnPacketEncode][i]
		if !en.live(mqtt.OnPacketEncode) {
			continue
		}
		if !encodeRef(en.h, cl, &pk) {
			pk = en.h.OnPacketEncode(cl, pk)
		}
	}
	return pk
}

// OnPacketSent implements mqtt.Hook.
func (s *hookSet) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	for i := range s.on[mqtt.OnPacketSent] {
		en := &s.on[mqtt.OnPacketSent][i]
		if !en.live(mqtt.OnPacketSent) {
			continue
		}
		if !sentRef(en.h, cl, &pk, b) {
			en.h.OnPacketSent(cl, pk, b)
		}
	}
}

// OnPacketProcessed implements mqtt.Hook.
func (s *hookSet) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	for i := range s.on[mqtt.OnPacketProcessed] {
		if en := &s.on[mqtt.OnPacketProcessed][i]; en.live(mqtt.OnPacketProcessed) {
			en.h.OnPacketProcessed(cl, pk, err)
		}
	}
}

// OnPublishDropped implements mqtt.Hook.
func (s *hookSet) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	for i := range s.on[mqtt.OnPublishDropped] {
		if en := &s.on[mqtt.OnPublishDropped][i]; en.live(mqtt.OnPublishDropped) {
			en.h.OnPublishDropped(cl, pk)
		}
	}
}

// OnSelectSubscribers implements mqtt.Hook: each hook gets the
// subscribers the one before returned.
func (s *hookSet) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	for i := range s.on[mqtt.OnSelectSubscribers] {
		if en := &s.on[mqtt.OnSelectSubscribers][i]; en.live(mqtt.OnSelectSubscribers) {
			subs = en.h.OnSelectSubscribers(subs, pk)
		}
	}
	return subs
}

// OnQosPublish implements mqtt.Hook.
func (s *hookSet) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	for i := range s.on[mqtt.OnQosPublish] {
		if en := &s.on[mqtt.OnQosPublish][i]; en.live(mqtt.OnQosPublish) {
			en.h.OnQosPublish(cl, pk, sent, resends)
		}
	}
}

// OnQosComplete implements mqtt.Hook.
func (s *hookSet) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	for i := range s.on[mqtt.OnQosComplete] {
		if en := &s.on[mqtt.OnQosComplete][i]; en.live(mqtt.OnQosComplete) {
			en.h.OnQosComplete(cl, pk)
		}
	}
}

// OnQosDropped implements mqtt.Hook.
func (s *hookSet) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	for i := range s.on[mqtt.OnQosDropped] {
		if en := &s.on[mqtt.OnQosDropped][i]; en.live(mqtt.OnQosDropped) {
			en.h.OnQosDropped(cl, pk)
		}
	}
}

// The ref functions call the method of h, a hook of this package, that
// takes the packet by pointer and changes it in place (a direct call, so
// the packet stays on the caller's stack), and report whether h has one;
// the caller calls h's mqtt.Hook method otherwise. Each such method does
// what the mqtt.Hook method does, which calls it.

func readRef(h mqtt.Hook, cl *mqtt.Client, pk *packets.Packet, err *error) bool {
	switch h := h.(type) {
	case *Auth:
		*err = h.packetRead(cl, pk)
	case *gate:
		h.packetRead(cl, pk)
	default:
		return false
	}
	return true
}

func publishRef(h mqtt.Hook, cl *mqtt.Client, pk *packets.Packet, err *error) bool {
	switch h := h.(type) {
	case *gate:
		*err = h.deepPublish(cl, pk)
	case *PublishLimit:
		*err = h.publish(cl, pk)
	case *RetainedLimit:
		*err = h.publish(cl, pk)
	case *CommandHook:
		*err = h.publish(cl, pk)
	case *Backpressure:
		*err = h.publish(cl, pk)
	case *sendQueueHook:
		h.q.publish(cl, pk)
	default:
		return false
	}
	return true
}

func publishedRef(h mqtt.Hook, cl *mqtt.Client, pk *packets.Packet) bool {
	switch h := h.(type) {
	case *TelemetryHook:
		h.published(cl, pk)
	case *TwinHook:
		h.published(cl, pk)
	case *sendQueueHook:
		h.q.published(cl, pk)
	default:
		return false
	}
	return true
}

func encodeRef(h mqtt.Hook, cl *mqtt.Client, pk *packets.Packet) bool {
	if g, ok := h.(*gate); ok {
		g.packetEncode(cl, pk)
		return true
	}
	return false
}

func sentRef(h mqtt.Hook, cl *mqtt.Client, pk *packets.Packet, b []byte) bool {
	switch h := h.(type) {
	case *CommandHook:
		h.packetSent(cl, pk)
	case *Backpressure:
		h.packetSent(cl, pk)
	default:
		return false
	}
	return true
}

// The other events: mochi's own Hooks over the same hooks.

// OnSysInfoTick implements mqtt.Hook.
func (s *hookSet) OnSysInfoTick(i *system.Info) { s.hooks.OnSysInfoTick(i) }

// OnStarted implements mqtt.Hook.
func (s *hookSet) OnStarted() { s.hooks.OnStarted() }

// OnStopped implements mqtt.Hook.
func (s *hookSet) OnStopped() { s.hooks.OnStopped() }

// OnConnectAuthenticate implements mqtt.Hook.
func (s *hookSet) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return s.hooks.OnConnectAuthenticate(cl, pk)
}

// OnConnect implements mqtt.Hook.
func (s *hookSet) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	return s.hooks.OnConnect(cl, pk)
}

// OnSessionEstablish implements mqtt.Hook.
func (s *hookSet) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	s.hooks.OnSessionEstablish(cl, pk)
}

// OnSessionEstablished implements mqtt.Hook.
func (s *hookSet) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s.hooks.OnSessionEstablished(cl, pk)
}

// OnDisconnect implements mqtt.Hook.
func (s *hookSet) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	s.hooks.OnDisconnect(cl, err, expire)
}

// OnAuthPacket implements mqtt.Hook.
func (s *hookSet) OnAuthPacket(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return s.hooks.OnAuthPacket(cl, pk)
}

// OnSubscribe implements mqtt.Hook.
func (s *hookSet) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return s.hooks.OnSubscribe(cl, pk)
}

// OnSubscribed implements mqtt.Hook.
func (s *hookSet) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	s.hooks.OnSubscribed(cl, pk, codes)
}

// OnUnsubscribe implements mqtt.Hook.
func (s *hookSet) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return s.hooks.OnUnsubscribe(cl, pk)
}

// OnUnsubscribed implements mqtt.Hook.
func (s *hookSet) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	s.hooks.OnUnsubscribed(cl, pk)
}

// OnRetainMessage implements mqtt.Hook.
func (s *hookSet) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	s.hooks.OnRetainMessage(cl, pk, r)
}

// OnRetainPublished implements mqtt.Hook.
func (s *hookSet) OnRetainPublished(cl *mqtt.Client, pk packets.Packet) {
	s.hooks.OnRetainPublished(cl, pk)
}

// OnPacketIDExhausted implements mqtt.Hook.
func (s *hookSet) OnPacketIDExhausted(cl *mqtt.Client, pk packets.Packet) {
	s.hooks.OnPacketIDExhausted(cl, pk)
}

// OnWill implements mqtt.Hook: mochi's Hooks.OnWill logs and skips a
// hook's error itself.
func (s *hookSet) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	return s.hooks.OnWill(cl, will), nil
}

// OnWillSent implements mqtt.Hook.
func (s *hookSet) OnWillSent(cl *mqtt.Client, pk packets.Packet) { s.hooks.OnWillSent(cl, pk) }

// OnClientExpired implements mqtt.Hook.
func (s *hookSet) OnClientExpired(cl *mqtt.Client) { s.hooks.OnClientExpired(cl) }

// OnRetainedExpired implements mqtt.Hook.
func (s *hookSet) OnRetainedExpired(filter string) { s.hooks.OnRetainedExpired(filter) }

// StoredClients implements mqtt.Hook.
func (s *hookSet) StoredClients() ([]storage.Client, error) { return s.hooks.StoredClients() }

// StoredSubscriptions implements mqtt.Hook.
func (s *hookSet) StoredSubscriptions() ([]storage.Subscription, error) {
	return s.hooks.StoredSubscriptions()
}

// StoredInflightMessages implements mqtt.Hook.
func (s *hookSet) StoredInflightMessages() ([]storage.Message, error) {
	return s.hooks.StoredInflightMessages()
}

// StoredRetainedMessages implements mqtt.Hook.
func (s *hookSet) StoredRetainedMessages() ([]storage.Message, error) {
	return s.hooks.StoredRetainedMessages()
}

// StoredSysInfo implements mqtt.Hook.
func (s *hookSet) StoredSysInfo() (storage.SystemInfo, error) { return s.hooks.StoredSysInfo() }

var _ mqtt.Hook = (*hookSet)(nil)
