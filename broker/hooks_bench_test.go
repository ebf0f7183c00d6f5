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
