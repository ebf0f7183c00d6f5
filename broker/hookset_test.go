package broker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// callLog records hook calls, in order.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *callLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

// chainHook is a test hook: on the events it provides it notes its call
// and appends "|id" to the PUBLISH payload it is given, unless told to
// fail (fail: the error its OnPacketRead or OnPublish returns; deny: its
// access check refuses).
type chainHook struct {
	mqtt.HookBase
	id     string
	log    *callLog
	events []byte
	on     atomic.Bool // the events are provided only while on
	// failRead, failPublish are returned for a payload "fail-" followed
	// by letters one of which is the hook's id (fail-bc: hooks b and c);
	// the hook's change is still made.
	failRead, failPublish error
	allow                 bool
}

func newChainHook(id string, log *callLog, events ...byte) *chainHook {
	h := &chainHook{id: id, log: log, events: events}
	h.on.Store(true)
	return h
}

func (h *chainHook) ID() string { return h.id }

func (h *chainHook) Provides(b byte) bool { return h.on.Load() && slices.Contains(h.events, b) }

func (h *chainHook) tag(what string, pk *packets.Packet) {
	h.log.add(h.id + "." + what)
	pk.Payload = append(slices.Clip(pk.Payload), "|"+h.id...)
}

func (h *chainHook) fails(payload []byte) bool {
	p, _, _ := strings.Cut(string(payload), "|")
	ids, ok := strings.CutPrefix(p, "fail-")
	return ok && strings.Contains(ids, h.id)
}

func (h *chainHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline {
		return pk, nil
	}
	fail := h.fails(pk.Payload)
	h.tag("read", &pk)
	if fail {
		return pk, h.failRead
	}
	return pk, nil
}

func (h *chainHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	fail := h.fails(pk.Payload)
	h.tag("publish", &pk)
	if fail {
		return pk, h.failPublish
	}
	return pk, nil
}

func (h *chainHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !cl.Net.Inline {
		h.log.add(h.id + ".published " + string(pk.Payload))
	}
}

func (h *chainHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	h.log.add(fmt.Sprintf("%s.acl %v", h.id, write))
	return h.allow
}

func (h *chainHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Publish {
		h.tag("encode", &pk)
	}
	return pk
}

func (h *chainHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.log.add(h.id + ".established " + cl.ID)
}

// varyingHook is a chainHook that says its answer varies.
type varyingHook struct{ *chainHook }

func (varyingHook) ProvidesVaries() bool { return true }

// TestHookSetLikeEngine runs the same hooks through mochi's own Hooks and
// through hookSet, event by event, and compares what each returns and
// which hooks were called, in which order: chained packets, an
// OnPacketRead error that is not a rejection (that hook's result is
// dropped, the next go on), a rejection (the rest are not called, the
// packet is the one before the hooks), OnPublish errors (each stops),
// the access check (the first that allows decides), hooks that provide
// none of it, and a varying hook off, then on.
func TestHookSetLikeEngine(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: storeLogger()})
	cl := srv.NewClient(nil, "tcp", "c1", false)
	type setup struct {
		log  callLog
		vary *chainHook
	}
	// hooks are: a (reads, publishes, encodes), quiet (nothing), b
	// (reads with a plain error, publishes with failPublish, refuses
	// access), v (varying: as b but allows access, starts off), c (reads
	// rejecting, publishes with failPublish, allows access), d
	// (publishes with failPublish, allows access).
	mk := func(failPublish error) (*setup, []mqtt.Hook) {
		s := &setup{}
		all := []byte{mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnACLCheck, mqtt.OnPacketEncode}
		a := newChainHook("a", &s.log, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPacketEncode)
		quiet := newChainHook("quiet", &s.log)
		b := newChainHook("b", &s.log, all...)
		b.failRead, b.failPublish = errors.New("not a rejection"), failPublish
		s.vary = newChainHook("v", &s.log, all...)
		s.vary.on.Store(false)
		s.vary.allow = true
		s.vary.failRead, s.vary.failPublish = errors.New("not a rejection"), failPublish
		c := newChainHook("c", &s.log, all...)
		c.failRead, c.failPublish, c.allow = packets.ErrRejectPacket, failPublish, true
		d := newChainHook("d", &s.log, mqtt.OnPublish, mqtt.OnACLCheck, mqtt.OnPublished)
		d.allow, d.failPublish = true, failPublish
		return s, []mqtt.Hook{a, quiet, b, varyingHook{s.vary}, c, d}
	}
	for _, failPublish := range []error{packets.ErrRejectPacket, packets.CodeSuccessIgnore, packets.ErrQuotaExceeded, errors.New("plain")} {
		es, eh := mk(failPublish)
		engine := &mqtt.Hooks{Log: storeLogger()}
		for _, h := range eh {
			if err := engine.Add(h, nil); err != nil {
				t.Fatal(err)
			}
		}
		ss, sh := mk(failPublish)
		set := newHookSet(storeLogger())
		for _, h := range sh {
			if err := set.add(srv, h); err != nil {
				t.Fatal(err)
			}
		}
		set.build()
		// The engine calls the set through its own Hooks, as its one hook.
		outer := &mqtt.Hooks{Log: storeLogger()}
		if err := outer.Add(set, nil); err != nil {
			t.Fatal(err)
		}
		for _, vary := range []bool{false, true} {
			es.vary.on.Store(vary)
			ss.vary.on.Store(vary)
			for _, payload := range []string{"ok", "fail-b", "fail-c", "fail-bc", "fail-d", "fail-v", "fail-bv"} {
				name := fmt.Sprintf("%v/vary=%v/%s", failPublish, vary, payload)
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t/1", Payload: []byte(payload)}
				type result struct {
					read, published, encoded string
					readErr, publishErr      error
					acl                      [2]bool
					calls                    []string
				}
				var got [2]result
				run := func(i int, h hotEvents5, log *callLog) {
					r := &got[i]
					rpk, err := h.OnPacketRead(cl, pk)
					r.read, r.readErr = string(rpk.Payload), err
					ppk, err := h.OnPublish(cl, rpk)
					r.published, r.publishErr = string(ppk.Payload), err
					h.OnPublished(cl, ppk)
					r.acl = [2]bool{h.OnACLCheck(cl, "t/1", true), h.OnACLCheck(cl, "t/1", false)}
					r.encoded = string(h.OnPacketEncode(cl, ppk).Payload)
					r.calls = log.take()
				}
				run(0, engineHook{engine}, &es.log)
				run(1, engineHook{outer}, &ss.log)
				if fmt.Sprint(got[0]) != fmt.Sprint(got[1]) {
					t.Errorf("%s:\nengine  %+v\nhookSet %+v", name, got[0], got[1])
				}
				if payload == "ok" && !vary && got[1].published != "ok|a|b|c|a|b|c|d" {
					t.Errorf("%s: published %q", name, got[1].published)
				}
				if payload == "ok" && vary && got[1].published != "ok|a|b|v|c|a|b|v|c|d" {
					t.Errorf("%s: published %q (the varying hook on)", name, got[1].published)
				}
			}
		}
		if set.Provides(mqtt.OnSessionEstablished) {
			t.Error("the set provides an event none of its hooks provides")
		}
	}
}

// hotEvents5 are the events TestHookSetLikeEngine compares.
type hotEvents5 interface {
	OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error)
	OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error)
	OnPublished(cl *mqtt.Client, pk packets.Packet)
	OnACLCheck(cl *mqtt.Client, topic string, write bool) bool
	OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet
}

// engineHook calls mochi's Hooks as hotEvents5.
type engineHook struct{ h *mqtt.Hooks }

func (e engineHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return e.h.OnPacketRead(cl, pk)
}
func (e engineHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return e.h.OnPublish(cl, pk)
}
func (e engineHook) OnPublished(cl *mqtt.Client, pk packets.Packet) { e.h.OnPublished(cl, pk) }
func (e engineHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return e.h.OnACLCheck(cl, topic, write)
}
func (e engineHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return e.h.OnPacketEncode(cl, pk)
}

// startChainBroker starts a broker with hooks (Options.Hooks), anonymous
// clients allowed.
func startChainBroker(t *testing.T, hooks ...mqtt.Hook) *Broker {
	t.Helper()
	o := DefaultOptions()
	o.TCPAddr, o.AllowAnonymous, o.Logger, o.Hooks = "127.0.0.1:0", true, storeLogger(), hooks
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(t.Context()) })
	return b
}

// A broker with three hooks: each is called in the order added, and
// each gets the message as the one before changed it (OnPacketRead, then
// OnPublish; what a subscriber receives has all their changes); a
// non-rejecting OnPacketRead error drops that hook's change only; an
// OnPublish rejection stops the hooks after it and the message is not
// routed; the hooks still get the other events (OnSessionEstablished).
func TestHookSetOrderOverTCP(t *testing.T) {
	var log callLog
	evs := []byte{mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnSessionEstablished}
	a, b, c := newChainHook("a", &log, evs...), newChainHook("b", &log, evs...), newChainHook("c", &log, evs...)
	b.failRead, c.failPublish = errors.New("not a rejection"), packets.ErrRejectPacket
	br := startChainBroker(t, a, b, c)
	addr := br.TCP.Address()

	var mu sync.Mutex
	var got []string
	sub := storeClient(t, addr, "sub", true, nil)
	waitToken(t, "subscribe", sub.Subscribe("chain/#", 0, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got = append(got, string(m.Payload()))
		mu.Unlock()
	}))
	pub := storeClient(t, addr, "pub", true, nil)
	waitLog := func(want []string) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			log.mu.Lock()
			defer log.mu.Unlock()
			if !slices.Equal(log.calls, want) {
				return fmt.Errorf("calls %q, want %q", log.calls, want)
			}
			return nil
		})
		log.take()
	}
	waitLog([]string{"a.established sub", "b.established sub", "c.established sub",
		"a.established pub", "b.established pub", "c.established pub"})

	waitToken(t, "publish", pub.Publish("chain/1", 0, false, "ok"))
	waitLog([]string{"a.read", "b.read", "c.read", "a.publish", "b.publish", "c.publish",
		"a.published ok|a|b|c|a|b|c", "b.published ok|a|b|c|a|b|c", "c.published ok|a|b|c|a|b|c"})
	waitToken(t, "publish", pub.Publish("chain/1", 0, false, "fail-b"))
	// b's read error drops its change only.
	waitLog([]string{"a.read", "b.read", "c.read", "a.publish", "b.publish", "c.publish",
		"a.published fail-b|a|c|a|b|c", "b.published fail-b|a|c|a|b|c", "c.published fail-b|a|c|a|b|c"})
	waitToken(t, "publish", pub.Publish("chain/1", 0, false, "fail-c"))
	// c's rejection: nothing is routed.
	waitLog([]string{"a.read", "b.read", "c.read", "a.publish", "b.publish", "c.publish"})
	waitToken(t, "publish", pub.Publish("chain/1", 0, false, "last"))
	waitLog([]string{"a.read", "b.read", "c.read", "a.publish", "b.publish", "c.publish",
		"a.published last|a|b|c|a|b|c", "b.published last|a|b|c|a|b|c", "c.published last|a|b|c|a|b|c"})
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if want := []string{"ok|a|b|c|a|b|c", "fail-b|a|c|a|b|c", "last|a|b|c|a|b|c"}; !slices.Equal(got, want) {
			return fmt.Errorf("received %q, want %q", got, want)
		}
		return nil
	})
}

// A hook that says its answer varies (ProvidesVaries) and provides
// nothing when the broker is built is called once it provides OnPublish,
// and no longer once it stops: its answer is asked for each message.
func TestHookSetVaryingHook(t *testing.T) {
	var log callLog
	v := newChainHook("v", &log, mqtt.OnPublish)
	v.on.Store(false)
	br := startChainBroker(t, varyingHook{v})
	addr := br.TCP.Address()
	var mu sync.Mutex
	var got []string
	sub := storeClient(t, addr, "sub", true, nil)
	waitToken(t, "subscribe", sub.Subscribe("vary/#", 0, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got = append(got, string(m.Payload()))
		mu.Unlock()
	}))
	pub := storeClient(t, addr, "pub", true, nil)
	received := func(n int) []string {
		t.Helper()
		var out []string
		checkFor(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(got) < n {
				return fmt.Errorf("%d of %d received", len(got), n)
			}
			out = slices.Clone(got)
			return nil
		})
		return out
	}
	waitToken(t, "publish", pub.Publish("vary/1", 0, false, "one"))
	received(1)
	v.on.Store(true)
	waitToken(t, "publish", pub.Publish("vary/1", 0, false, "two"))
	received(2)
	v.on.Store(false)
	waitToken(t, "publish", pub.Publish("vary/1", 0, false, "three"))
	if r := received(3); strings.Join(r, ",") != "one,two|v,three" {
		t.Errorf("received %q, want one, two|v, three", r)
	}
	if c := log.take(); !slices.Equal(c, []string{"v.publish"}) {
		t.Errorf("calls %q", c)
	}
}
