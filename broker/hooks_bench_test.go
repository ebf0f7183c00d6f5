package broker

import (
	"io"
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkHookDispatch is the engine's hook calls for one QoS 0 PUBLISH
// routed to one subscriber (OnPacketRead, OnPublish, OnPacketEncode,
// OnPacketSent, OnPublished), through mochi's own Hooks with the broker's
// per-message hooks that have nothing to do in the common case
// (backpressure with nobody behind, retained with no SUBSCRIBE being
// answered). The engine asks each hook's Provides before each call and
// copies the 800-byte packet in and out of each hook that provides it: a
// hook that provides an event only while it has work skips both.
//
//	go test -run XXX -bench HookDispatch -benchmem ./broker/
func BenchmarkHookDispatch(b *testing.B) {
	h := &mqtt.Hooks{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, hook := range []mqtt.Hook{NewBackpressure(time.Second), NewRetained()} {
		if err := h.Add(hook, nil); err != nil {
			b.Fatal(err)
		}
	}
	cl := &mqtt.Client{ID: "pub"}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "bench/pairs/1", Payload: make([]byte, 64)}
	calls := 0 // hooks the engine calls (and copies the packet for) per message
	for _, hook := range h.GetAll() {
		for _, e := range []byte{mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPacketEncode, mqtt.OnPacketSent, mqtt.OnPublished} {
			if hook.Provides(e) {
				calls++
			}
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		pk, _ = h.OnPacketRead(cl, pk)
		pk, _ = h.OnPublish(cl, pk)
		pk = h.OnPacketEncode(cl, pk)
		h.OnPacketSent(cl, pk, nil)
		h.OnPublished(cl, pk)
	}
	b.ReportMetric(float64(calls), "hook-calls/msg")
}

// BenchmarkTopicLevelsGate is the engine's OnPublish calls for one PUBLISH
// through mochi's own Hooks with the hooks that provide it at the defaults
// (the publish rates, the retained bound; the client unlimited, as an
// anonymous one is) and the check of mqtt.max_topic_levels: in the gate's
// own OnPublish (gate: before, one hook call more), in the publish rates'
// (folded: as broker.New has it now), or none (off: 0). The gate-only
// pair is the gate's call alone, with and without the check.
//
//	go test -run XXX -bench TopicLevelsGate -benchmem ./broker/
func BenchmarkTopicLevelsGate(b *testing.B) {
	for _, c := range []struct {
		name           string
		levels         int
		others, folded bool
	}{{"gate", 32, true, false}, {"folded", 32, true, true}, {"off", 0, true, false},
		{"gate-only-on", 32, false, false}, {"gate-only-off", 0, false, false}} {
		b.Run(c.name, func(b *testing.B) {
			h := &mqtt.Hooks{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			g := &gate{b: &Broker{opts: Options{MaxTopicLevels: c.levels}}}
			hooks := []mqtt.Hook{g}
			if c.others {
				pl := NewPublishLimit(PublishLimitOptions{DeviceRate: 100})
				hooks = append(hooks, pl, NewRetainedLimit(DefaultRetainedLimitOptions()))
				if c.folded {
					pl.levels = g
				}
			}
			g.published = c.levels > 0 && !c.folded
			for _, hook := range hooks {
				if err := h.Add(hook, nil); err != nil {
					b.Fatal(err)
				}
			}
			cl := &mqtt.Client{ID: "pub"}
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/d1/telemetry", Payload: make([]byte, 64)}
			b.ReportAllocs()
			for b.Loop() {
				pk, _ = h.OnPublish(cl, pk)
			}
		})
	}
}
