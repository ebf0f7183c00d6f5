package broker

import (
	"hash/maphash"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	topicpkg "github.com/tether-iot/tether/devices/topic"
	"github.com/tether-iot/tether/internal/logtext"
)

// Topic levels (mqtt.max_topic_levels): the engine keeps subscriptions and
// retained messages in a tree with a node per level, about 600 bytes each,
// whatever the level's length. A filter or retained topic of 30,000 empty
// or one-byte levels fits in a 64 KiB topic and cost 19 MB of memory (and
// seconds of CPU to add and remove), so the other bounds, which count
// filters, messages and bytes, did not bound memory: one device with
// mqtt.max_subscriptions_per_client filters under its own
// devices/{id}/commands/# could take 19 GB, and its 16 MiB of retained
// topics under devices/{id}/responses/# 5 GB, reloaded at every start.
//
// The gate refuses, before the engine adds anything, every topic name and
// filter with more levels than the bound, whoever the client (admins
// included):
//
//   - a SUBSCRIBE filter: SUBACK 0x8F topic filter invalid (3.1.1: 0x80);
//     the packet's other filters are granted (a shared subscription is
//     counted as its filter, without $share/{group});
//   - a PUBLISH: PUBACK (QoS 1) or PUBREC (QoS 2) 0x90 topic name invalid,
//     neither routed nor retained; a 3.1.1 client at QoS 1/2 is
//     disconnected (it has no other way to be told), QoS 0 is dropped;
//   - a CONNECT's will: CONNACK 0x90 (3.1.1: 0x05 not authorized).
//
// Each is counted in tether_mqtt_topic_levels_refused_total{what} and
// logged at most once a minute per client. Such a refusal is not an ACL
// denial: it does not count towards bans. What the session store holds
// from before the bound (or under a higher one) is not loaded at start:
// the store drops its deeper filters and retained topics
// (sessions.Options.MaxTopicLevels).

// topicLevelsLogEvery is how often a client's refusals are logged.
const topicLevelsLogEvery = time.Minute

// deepFilter replaces a SUBSCRIBE filter with too many levels: the engine
// answers a filter it finds invalid ("#" not last) with 0x8F before it
// checks access or adds anything [MQTT-4.7.1-1].
const deepFilter = "#/"

// topicLevelsRefused counts refusals by what was refused.
type topicLevelsRefused struct {
	subscribe, publish, will atomic.Int64
}

// tooManyLevels reports whether topic (a topic name or filter) has more
// than max levels; max 0 is no bound.
func tooManyLevels(topic string, max int) bool { return topicpkg.TooDeep(topic, max) }

// deepSubscribe gives each filter of a SUBSCRIBE with too many levels the
// filter deepFilter, so that the engine refuses it (read calls it).
func (g *gate) deepSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	max := g.b.opts.MaxTopicLevels
	if pk.FixedHeader.Type != packets.Subscribe || max <= 0 || cl.Net.Inline {
		return pk
	}
	for i, f := range pk.Filters {
		if tooManyLevels(unshare(f.Filter), max) {
			g.b.levelsRefused.subscribe.Add(1)
			g.logLevels(cl, "subscribe", f.Filter)
			pk.Filters[i].Filter = deepFilter
		}
	}
	return pk
}

// OnPublish refuses a PUBLISH whose topic has too many levels
// (deepPublish).
func (g *gate) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return pk, g.deepPublish(cl, &pk)
}

// deepPublish refuses a PUBLISH whose topic has too many levels. The
// engine calls it in the first OnPublish, after the access check and the
// topic alias (so a message sent by alias is checked as its topic), before
// any other hook's: the message is neither queued, retained nor routed.
// That OnPublish is the gate's, or, when the publish rates' hook
// (PublishLimit) comes first after it, as in tether serve, that hook's:
// one hook call less per PUBLISH (BenchmarkTopicLevelsGate). It takes the
// packet by pointer: a copy of the 800-byte packet in and out costs more
// than the check. It returns packets.ErrRejectPacket for a refused one.
func (g *gate) deepPublish(cl *mqtt.Client, pk *packets.Packet) error {
	if cl.Net.Inline || !tooManyLevels(pk.TopicName, g.b.opts.MaxTopicLevels) {
		return nil
	}
	g.b.levelsRefused.publish.Add(1)
	g.logLevels(cl, "publish", pk.TopicName)
	if refusePublish(cl, *pk, packets.ErrTopicNameInvalid) {
		cl.Stop(packets.ErrTopicNameInvalid)
	}
	return packets.ErrRejectPacket // the engine neither retains nor routes it
}

// deepWill refuses a CONNECT whose will topic has too many levels (OnConnect
// calls it), before the client is authenticated.
func (g *gate) deepWill(cl *mqtt.Client, pk packets.Packet) error {
	if !pk.Connect.WillFlag || !tooManyLevels(pk.Connect.WillTopic, g.b.opts.MaxTopicLevels) {
		return nil
	}
	g.b.levelsRefused.will.Add(1)
	g.logLevels(cl, "will", pk.Connect.WillTopic)
	return Refuse(g.b.Server, cl, packets.ErrTopicNameInvalid)
}

// logLevels logs the first refusal of cl's in a minute: the topic and
// client id are cut (logtext.Short), as they may be 64 KiB long.
func (g *gate) logLevels(cl *mqtt.Client, what, topic string) {
	if !g.b.levelsLogged.Allow(cl.ID, time.Now()) {
		return
	}
	g.b.log.Warn("topic refused: more levels than mqtt.max_topic_levels (first this minute for this client)",
		"client", logtext.Short(cl.ID), "what", what, "topic", logtext.Short(topic), "levels", topicpkg.Levels(topic),
		"limit", g.b.opts.MaxTopicLevels)
}

// A prefix of a topic or filter (a, a/b, a/b/c for a/b/c; "" and /a for
// /a) is a node of the engine's topic index, one for all the topics and
// filters that need it, retained or subscribed, whoever holds them
// (BenchmarkTopicLevelCost, BenchmarkSubscriptionPrefixCost). The bounds
// that count levels (mqtt.max_retained_bytes and its per-device bound:
// retained_limit.go; mqtt.max_subscription_levels_per_client:
// auth_sublevels.go) count each prefix their topics need once, in a map
// from the prefix's hash to the number of topics that need it.

// forPrefixes calls f with the hash (seeded with seed) of each prefix of
// topic, reading the topic once.
func forPrefixes(seed maphash.Seed, topic string, f func(uint64)) {
	var h maphash.Hash
	h.SetSeed(seed)
	from := 0
	for i := 0; i <= len(topic); i++ {
		if i == len(topic) || topic[i] == '/' {
			h.WriteString(topic[from:i])
			f(h.Sum64())
			from = i
		}
	}
}

// newPrefixes counts the prefixes of topic that m (a count of prefixes)
// does not hold yet.
func newPrefixes(seed maphash.Seed, topic string, m map[uint64]int32) int64 {
	var n int64
	forPrefixes(seed, topic, func(h uint64) {
		if m[h] == 0 {
			n++
		}
	})
	return n
}

// unref takes one topic off prefix h's count in m.
func unref(m map[uint64]int32, h uint64) {
	if m[h] <= 1 {
		delete(m, h)
		return
	}
	m[h]--
}
