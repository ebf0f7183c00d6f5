package broker

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// heapNow is the live heap after a collection.
func heapNow() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// levelTopic is a topic of levels levels, the first unique to i: none of
// its levels is shared with another i's.
func levelTopic(i, levels int) string {
	parts := make([]string, levels)
	parts[0] = fmt.Sprint("t", i)
	for j := 1; j < levels; j++ {
		parts[j] = "l"
	}
	return strings.Join(parts, "/")
}

// BenchmarkTopicLevelCost measures what the engine's topic index keeps
// for a retained message and a subscription filter, per level not shared
// with another topic (docs/upstream.md item 22): the heap after n
// messages or filters of 1 and of 33 levels, the difference over 32 n.
func BenchmarkTopicLevelCost(b *testing.B) {
	const n = 5000
	payload := []byte("v")
	for _, what := range []string{"retained", "subscription"} {
		b.Run(what, func(b *testing.B) {
			for range b.N {
				per := map[int]float64{}
				for _, levels := range []int{1, 33} {
					srv := mqtt.New(&mqtt.Options{InlineClient: false})
					topics := make([]string, n)
					for i := range n {
						topics[i] = levelTopic(i, levels)
					}
					before := heapNow()
					for i, topic := range topics {
						if what == "retained" {
							srv.Topics.RetainMessage(packets.Packet{TopicName: topic, Payload: payload,
								FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}})
						} else {
							srv.Topics.Subscribe("c", packets.Subscription{Filter: topic, Identifier: i})
						}
					}
					per[levels] = float64(heapNow()-before) / n
					runtime.KeepAlive(srv)
					runtime.KeepAlive(topics)
				}
				b.ReportMetric(per[1], "B/one-level")
				b.ReportMetric((per[33]-per[1])/32, "B/level")
			}
		})
	}
}

// BenchmarkRetainedLevelIndex measures what RetainedLimit's own index
// keeps per level of a device's retained topics (the total's and the
// owner's count of the prefix), as BenchmarkTopicLevelCost does for the
// engine's.
func BenchmarkRetainedLevelIndex(b *testing.B) {
	const n = 5000
	for range b.N {
		per := map[int]float64{}
		for _, levels := range []int{1, 33} {
			l := NewRetainedLimit(RetainedLimitOptions{})
			l.loaded = true
			topics := make([]string, n)
			for i := range n {
				topics[i] = levelTopic(i, levels)
			}
			before := heapNow()
			l.mu.Lock()
			for _, topic := range topics {
				l.setLocked(topic, retainedEntry{owner: "d", size: int64(len(topic) + 1)}, true)
			}
			l.mu.Unlock()
			per[levels] = float64(heapNow()-before) / n
			runtime.KeepAlive(l)
			runtime.KeepAlive(topics)
		}
		b.ReportMetric(per[1], "B/one-level")
		b.ReportMetric((per[33]-per[1])/32, "B/level")
	}
}

// sharedTopic is a topic of levels levels whose first levels-1 are the
// same for every i: only its last level is its own.
func sharedTopic(i, levels int) string {
	return strings.Repeat("l/", levels-1) + fmt.Sprint("t", i)
}

// BenchmarkSubscriptionPrefixCost measures what the engine keeps for n
// filters of one client of 32 levels each, with no level shared
// (distinct) and with the first 31 levels the same for all (shared): the
// heap per filter. Its topic index keeps one node per prefix, whoever
// and however many filters need it, so the shared filters cost one node
// and the subscription each, the distinct ones 32 nodes each
// (mqtt.max_subscription_levels_per_client counts prefixes once).
func BenchmarkSubscriptionPrefixCost(b *testing.B) {
	const n, levels = 1000, 32
	for _, shape := range []string{"distinct", "shared"} {
		b.Run(shape, func(b *testing.B) {
			for range b.N {
				srv := mqtt.New(&mqtt.Options{InlineClient: false})
				filters := make([]string, n)
				for i := range n {
					if shape == "distinct" {
						filters[i] = levelTopic(i, levels)
					} else {
						filters[i] = sharedTopic(i, levels)
					}
				}
				before := heapNow()
				for i, f := range filters {
					srv.Topics.Subscribe("c", packets.Subscription{Filter: f, Identifier: i})
				}
				b.ReportMetric(float64(heapNow()-before)/n, "B/filter")
				runtime.KeepAlive(srv)
				runtime.KeepAlive(filters)
			}
		})
	}
}
