package broker

import (
	"fmt"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkSubscriptionLevels is what the access hook does for one new
// filter of a SUBSCRIBE, and for its UNSUBSCRIBE, for a session holding
// held filters of 4 levels: noting the packet, the bounds' check
// (overSubscriptions: mqtt.max_subscriptions_per_client, then
// mqtt.max_subscription_levels_per_client), and OnUnsubscribed; the
// engine's own adding and dropping of the filter in the session in
// between. off: mqtt.max_subscription_levels_per_client 0. Below 250
// filters (8,000 / 32) nothing is counted; from there on a map lookup per
// level, whatever held is.
func BenchmarkSubscriptionLevels(b *testing.B) {
	for _, held := range []int{10, 300, 999} {
		for _, bound := range []string{"off", "on"} {
			b.Run(fmt.Sprintf("held=%d/%s", held, bound), func(b *testing.B) {
				e := benchAuthBroker(b)
				if bound == "off" {
					e.auth.maxLevels = 0
				}
				cl := e.b.Server.NewClient(nil, "tcp", "bench", false)
				for i := range held {
					f := fmt.Sprintf("devices/d%04d/telemetry/x", i)
					cl.State.Subscriptions.Add(f, packets.Subscription{Filter: f})
				}
				sub := packets.Subscription{Filter: "devices/new/telemetry/x"}
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, Filters: packets.Subscriptions{sub}}
				un := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, Filters: packets.Subscriptions{sub}}
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					e.auth.noteSubscribe(cl, &pk)
					if e.auth.overSubscriptions(cl, pk.Filters[0].Filter) {
						b.Fatal("refused")
					}
					cl.State.Subscriptions.Add(sub.Filter, sub)
					cl.State.Subscriptions.Delete(sub.Filter)
					e.auth.OnUnsubscribed(cl, un)
				}
			})
		}
	}
}

// BenchmarkSubscriptionLevelIndex measures what a connection's count of
// its session's prefixes keeps (countLevels) per level, as
// BenchmarkRetainedLevelIndex does for the retained bounds' index: the
// heap for 250 filters of 1 and of 32 levels, the difference over 31
// per filter.
func BenchmarkSubscriptionLevelIndex(b *testing.B) {
	const n = 250
	a := benchAuthBroker(b).auth
	for range b.N {
		per := map[int]float64{}
		for _, levels := range []int{1, 32} {
			srv := mqtt.New(&mqtt.Options{InlineClient: false})
			cl := srv.NewClient(nil, "tcp", "c", false)
			for i := range n {
				f := levelTopic(i, levels)
				cl.State.Subscriptions.Add(f, packets.Subscription{Filter: f})
			}
			before := heapNow()
			a.countLevels(cl)
			per[levels] = float64(heapNow()-before) / n
			a.forgetLevels(cl)
		}
		b.ReportMetric(per[1], "B/one-level")
		b.ReportMetric((per[32]-per[1])/31, "B/level")
	}
}
