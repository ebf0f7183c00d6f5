package broker

import (
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/logevery"
	"github.com/tether-iot/tether/internal/logtext"
)

// RetainedLimitOptions bound the retained messages the broker holds
// (mqtt.max_retained_*). A bound of 0 is unlimited.
type RetainedLimitOptions struct {
	// MaxMessages and MaxBytes bound all retained messages together
	// (mqtt.max_retained_messages, mqtt.max_retained_bytes), whoever set
	// them: the broker's own (statuses, desired twins) and those copied
	// from other nodes count, but are never refused.
	MaxMessages, MaxBytes int64
	// DeviceMessages and DeviceBytes bound the retained messages each
	// device has set that are still retained
	// (mqtt.max_retained_messages_per_device,
	// mqtt.max_retained_bytes_per_device). People, admins and anonymous
	// clients are held to the global bounds only.
	DeviceMessages, DeviceBytes int64
	// Identity tells devices from the others (Auth.Identity); nil treats
	// every client as not a device.
	Identity func(*mqtt.Client) (devices.Identity, bool)
	// BrokerOrigins are client ids whose retained messages belong to
	// nobody: those the broker injects itself besides the engine's
	// inline client, i.e. a cluster node's injector. See owner.
	BrokerOrigins []string
	// Logger receives the hook's log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultRetainedLimitOptions returns the bounds of configs.Default: far
// above what a fleet's devices retain (a status, a few configuration or
// discovery topics; a bridge a few thousand), far below what hurts the
// broker, which keeps every retained message in memory (about 1.4 KB
// each besides its topic and payload) and reloads them all at start-up.
func DefaultRetainedLimitOptions() RetainedLimitOptions {
	return RetainedLimitOptions{
		MaxMessages:    1_000_000,
		MaxBytes:       512 << 20,
		DeviceMessages: 10_000,
		DeviceBytes:    16 << 20,
	}
}

// RetainedLimit bounds retained messages: per device (the messages it has
// set that are still retained, count and bytes) and for all of them
// together. The largest message is already bounded by
// mqtt.max_packet_size.
//
// What it counts is read from the engine's retained store, never
// inferred from what passed: after every change the engine makes to a
// topic's retained message (OnRetainMessage, OnRetainedExpired, and Sync
// for the copies a cluster node writes into the engine directly), the
// topic's entry is set to what the engine holds there now: its owner and
// its size, or nothing. So ownership follows the message: a device's
// message replaced by another client, or deleted by anyone, or expired,
// no longer counts for that device. Concurrent publishers on one topic
// cannot make the count drift, since whichever sync runs last reads the
// engine's final state. At start-up (OnStarted) the whole index is built
// from the retained messages the engine loaded from the session store;
// the same rule gives the same counts as before the restart.
//
// A message's owner is its Origin, the client id of its publisher (kept
// with it in the session store): a device's client id is its id, and
// nobody else may use it (SPEC §5), so a device's messages are found by
// its id alone. Messages of the broker itself (Origin "inline", the
// cluster's injector: BrokerOrigins) and $SYS (the engine's, rewritten
// every sys_interval without hooks) belong to nobody; $SYS ones are not
// counted at all. Bytes are the topic, the payload and the properties
// that are kept with the message, and retainedLevelCost for each level
// of the engine's topic index that the retained topics need: a node per
// level, some 600 bytes whatever its length (docs/upstream.md item 22),
// which a million messages of 32 levels made 19 GB the bounds did not
// see. A level is a prefix of the topic (a, a/b, a/b/c for a/b/c): for
// all retained messages together each prefix counts once, however many
// topics share it, as the engine keeps one node; for a device, each
// prefix its own retained topics need counts once, even where another's
// topic needs it too (what the device's messages would cost on their
// own). Both follow the topics retained now: a prefix stops counting
// when the last topic that needs it goes.
//
// The check runs in OnPublish on the publisher's goroutine, in memory
// (one map lookup under a mutex). A retained PUBLISH with a payload that
// would take its device, or all retained messages together, past a bound
// is refused as a whole: not retained and not routed, since MQTT 5's
// PUBACK 0x97 quota exceeded says the message was not accepted (a
// publisher that is told so and sees it delivered anyway would retry
// and duplicate it). Like any refused publish: an MQTT 5 client gets
// PUBACK (QoS 1) or PUBREC (QoS 2) 0x97; a 3.1.1 client at QoS 1/2 is
// disconnected, as 3.1.1 has no way to refuse [MQTT-3.3.5-2]; QoS 0 is
// dropped. Always allowed: deleting (an empty payload), and replacing a
// message with one that adds nothing to the bound (the device's own
// message by one no larger; at the global bound, any message by one no
// larger), so that a status or configuration topic kept up to date
// keeps working at a full store. A will that would pass a bound goes
// out unretained (OnWill): nobody could be told it was refused. The
// broker's own messages and the cluster's copies are never refused: each
// node enforces the bounds on what its own clients publish, and takes
// what the others accepted, so that the nodes do not disagree. Each
// refusal is counted in tether_mqtt_retained_refused_total{limit} and the
// first per client per minute is logged.
//
// A device's messages are checked one at a time (it has one connection at
// a time, read in order), so its bounds hold (but for its last will racing
// the first publish of its next connection); the global bounds may be
// passed by at most one message per client publishing at that very
// moment, the time between the check and the engine's store. The index
// costs about 110 bytes a message besides the engine's 1.4 KB (200,000
// messages of 1,000 owners: 78 bytes for the counts, 32 for each owner's
// list of topics). It is kept whatever the bounds, even none: it also
// names a deleted device's retained messages (Owned, Auth.clearRetained).
type RetainedLimit struct {
	mqtt.HookBase
	o      RetainedLimitOptions
	srv    atomic.Pointer[mqtt.Server]
	log    *slog.Logger
	logged *logevery.Keys
	broker map[string]bool // BrokerOrigins and the inline client

	mu     sync.Mutex
	loaded bool
	topics map[string]retainedEntry
	owners map[string]*retainedUsage
	total  retainedUsage
	// levels counts, for each prefix of the retained topics (by its
	// hash, seeded with seed), the topics that need it: the total's
	// levels (retainedLevelCost each).
	levels map[uint64]int32
	seed   maphash.Seed
	// under holds, per device id, the retained topics under
	// devices/{id}/, whoever set them (Under): the engine's own wildcard
	// lookup of them races with its writes (docs/upstream.md item 6).
	under map[string]map[string]struct{}

	refused *prometheus.CounterVec
	bytes   *prometheus.Desc
}

type retainedEntry struct {
	owner string // "" for nobody
	size  int64
}

type retainedUsage struct {
	count, bytes int64
	// topics are the owner's topics (nil for the total): what a deleted
	// device leaves (Owned).
	topics map[string]struct{}
	// levels counts, for each prefix of the owner's topics, the topics
	// that need it (nil for the total: RetainedLimit.levels).
	levels map[uint64]int32
}

// retainedLevelCost is what a level of a retained topic counts for: the
// engine's node in its topic index, 608 bytes on mochi v2.7.9 whatever
// the level's length (BenchmarkTopicLevelCost), and this index's own
// counts of it, two map entries: 57 bytes (BenchmarkRetainedLevelIndex).
const retainedLevelCost = 665

// forLevels calls f with the hash of each prefix of topic that is a
// level of the engine's index (forPrefixes).
func (l *RetainedLimit) forLevels(topic string, f func(uint64)) { forPrefixes(l.seed, topic, f) }

// charged is the bytes u counts for: its messages' and its levels'.
func (u *retainedUsage) charged(levels int) int64 {
	return u.bytes + int64(levels)*retainedLevelCost
}

// The limits a refusal names (tether_mqtt_retained_refused_total{limit}).
const (
	limitDeviceMessages = "device_messages"
	limitDeviceBytes    = "device_bytes"
	limitMessages       = "messages"
	limitBytes          = "bytes"
)

// retainedLogEvery is how often a client's refusals are logged.
const retainedLogEvery = time.Minute

// NewRetainedLimit returns the hook; Attach it to the engine once built.
func NewRetainedLimit(o RetainedLimitOptions) *RetainedLimit {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	l := &RetainedLimit{
		o: o, log: log.With("component", "broker"), logged: logevery.New(retainedLogEvery),
		broker: map[string]bool{mqtt.InlineClientId: true},
		topics: map[string]retainedEntry{}, owners: map[string]*retainedUsage{}, under: map[string]map[string]struct{}{},
		levels: map[uint64]int32{}, seed: maphash.MakeSeed(),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_mqtt_retained_refused_total",
			Help: "Retained PUBLISH packets refused (not retained, not routed) and retained wills sent unretained because they would pass a bound, by limit (device_messages, device_bytes: mqtt.max_retained_*_per_device; messages, bytes: mqtt.max_retained_messages, mqtt.max_retained_bytes)."},
			[]string{"limit"}),
		bytes: prometheus.NewDesc("tether_mqtt_retained_bytes",
			"Bytes counted for the retained messages held against mqtt.max_retained_bytes: their topics, payloads and properties, and 665 for each level of the topic index they need ($SYS excepted).", nil, nil),
	}
	for _, id := range o.BrokerOrigins {
		l.broker[id] = true
	}
	return l
}

// Attach gives the hook the engine it serves.
func (l *RetainedLimit) Attach(srv *mqtt.Server) { l.srv.Store(srv) }

// ID implements mqtt.Hook.
func (l *RetainedLimit) ID() string { return "tether-retained-limit" }

func (l *RetainedLimit) enabled() bool {
	return l.o.MaxMessages > 0 || l.o.MaxBytes > 0 || l.o.DeviceMessages > 0 || l.o.DeviceBytes > 0
}

// Provides implements mqtt.Hook. The index is kept whatever the bounds:
// it also tells a deleted device's retained messages (Owned).
func (l *RetainedLimit) Provides(b byte) bool {
	switch b {
	case mqtt.OnRetainMessage, mqtt.OnRetainedExpired, mqtt.OnStarted:
		return true
	case mqtt.OnPublish, mqtt.OnWill:
		return l.enabled()
	}
	return false
}

// OnStarted counts the retained messages the engine loaded from the
// session store.
func (l *RetainedLimit) OnStarted() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loadLocked()
}

// OnPublish refuses a retained message that would pass a bound.
func (l *RetainedLimit) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return pk, l.publish(cl, &pk)
}

// publish is OnPublish for the packet by pointer (hookSet); it changes
// nothing in it.
func (l *RetainedLimit) publish(cl *mqtt.Client, pk *packets.Packet) error {
	if !pk.FixedHeader.Retain || len(pk.Payload) == 0 || cl.Net.Inline || isSysTopic(pk.TopicName) {
		return nil
	}
	limit := l.check(cl, pk.TopicName, retainedSize(*pk))
	if limit == "" {
		return nil
	}
	l.refuse(cl, pk.TopicName, limit, "publish")
	if refusePublish(cl, *pk, packets.ErrQuotaExceeded) {
		cl.Stop(packets.ErrQuotaExceeded)
	}
	return packets.ErrRejectPacket // the engine neither retains nor routes it
}

// OnWill sends a retained will that would pass a bound unretained.
func (l *RetainedLimit) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !will.Retain || len(will.Payload) == 0 || isSysTopic(will.TopicName) {
		return will, nil
	}
	pk := packets.Packet{TopicName: will.TopicName, Payload: will.Payload, Properties: packets.Properties{User: will.User}}
	if limit := l.check(cl, will.TopicName, retainedSize(pk)); limit != "" {
		l.refuse(cl, will.TopicName, limit, "will")
		will.Retain = false
	}
	return will, nil
}

// OnRetainMessage takes the topic's retained message as the engine now
// holds it.
func (l *RetainedLimit) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	l.Sync(pk.TopicName)
}

// OnRetainedExpired forgets an expired retained message.
func (l *RetainedLimit) OnRetainedExpired(topic string) { l.Sync(topic) }

// Sync takes topic's retained message as the engine now holds it, after a
// change made without the engine's hooks (a cluster node's copy of
// another's retained messages).
func (l *RetainedLimit) Sync(topic string) {
	srv := l.srv.Load()
	if srv == nil || isSysTopic(topic) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		l.loadLocked() // reads this topic too
		return
	}
	cur, ok := srv.Topics.Retained.Get(topic)
	if !ok || len(cur.Payload) == 0 {
		l.setLocked(topic, retainedEntry{}, false)
		return
	}
	l.setLocked(topic, retainedEntry{owner: l.owner(cur.Origin), size: retainedSize(cur)}, true)
}

// owner returns who a retained message published by origin counts for.
func (l *RetainedLimit) owner(origin string) string {
	if l.broker[origin] {
		return ""
	}
	return origin
}

// setLocked makes topic's entry e (or none, !ok), moving the counts.
func (l *RetainedLimit) setLocked(topic string, e retainedEntry, ok bool) {
	if old, had := l.topics[topic]; had {
		l.total.count--
		l.total.bytes -= old.size
		var u *retainedUsage
		if old.owner != "" {
			u = l.owners[old.owner]
			u.count--
			u.bytes -= old.size
			delete(u.topics, topic)
			if u.count == 0 {
				delete(l.owners, old.owner)
			}
		}
		l.forLevels(topic, func(h uint64) {
			unref(l.levels, h)
			if u != nil {
				unref(u.levels, h)
			}
		})
		delete(l.topics, topic)
		if id := deviceOfTopic(topic); id != "" {
			delete(l.under[id], topic)
			if len(l.under[id]) == 0 {
				delete(l.under, id)
			}
		}
	}
	if !ok {
		return
	}
	l.topics[topic] = e
	if id := deviceOfTopic(topic); id != "" {
		if l.under[id] == nil {
			l.under[id] = map[string]struct{}{}
		}
		l.under[id][topic] = struct{}{}
	}
	l.total.count++
	l.total.bytes += e.size
	var u *retainedUsage
	if e.owner != "" {
		u = l.owners[e.owner]
		if u == nil {
			u = &retainedUsage{topics: map[string]struct{}{}, levels: map[uint64]int32{}}
			l.owners[e.owner] = u
		}
		u.count++
		u.bytes += e.size
		u.topics[topic] = struct{}{}
	}
	l.forLevels(topic, func(h uint64) {
		l.levels[h]++
		if u != nil {
			u.levels[h]++
		}
	})
}

// loadLocked builds the index from the engine's retained messages. The
// engine's copy is taken under the lock, so a change made meanwhile is
// either in it or synced after it.
func (l *RetainedLimit) loadLocked() {
	srv := l.srv.Load()
	if srv == nil {
		return
	}
	l.topics, l.owners, l.total = map[string]retainedEntry{}, map[string]*retainedUsage{}, retainedUsage{}
	l.levels = map[uint64]int32{}
	l.under = map[string]map[string]struct{}{}
	for topic, pk := range srv.Topics.Retained.GetAll() {
		if len(pk.Payload) == 0 || isSysTopic(topic) {
			continue
		}
		l.setLocked(topic, retainedEntry{owner: l.owner(pk.Origin), size: retainedSize(pk)}, true)
	}
	l.loaded = true
}

// check returns the bound that retaining size bytes on topic for cl would
// pass, or "".
func (l *RetainedLimit) check(cl *mqtt.Client, topic string, size int64) string {
	device := false
	if l.o.Identity != nil && (l.o.DeviceMessages > 0 || l.o.DeviceBytes > 0) {
		id, ok := l.o.Identity(cl)
		device = ok && id.Kind == devices.KindDevice
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		l.loadLocked()
	}
	old, had := l.topics[topic]
	if me := l.owner(cl.ID); device && me != "" {
		var u retainedUsage
		if p := l.owners[me]; p != nil {
			u = *p
		}
		own := had && old.owner == me // it replaces its own message
		add := size
		if own {
			add -= old.size // and needs no new level
		} else {
			add += l.newLevels(topic, u.levels) * retainedLevelCost
		}
		switch {
		case l.o.DeviceMessages > 0 && !own && u.count+1 > l.o.DeviceMessages:
			return limitDeviceMessages
		case l.o.DeviceBytes > 0 && add > 0 && u.charged(len(u.levels))+add > l.o.DeviceBytes:
			return limitDeviceBytes
		}
	}
	add := size - old.size
	if !had {
		add += l.newLevels(topic, l.levels) * retainedLevelCost
	}
	switch {
	case l.o.MaxMessages > 0 && !had && l.total.count+1 > l.o.MaxMessages:
		return limitMessages
	case l.o.MaxBytes > 0 && add > 0 && l.total.charged(len(l.levels))+add > l.o.MaxBytes:
		return limitBytes
	}
	return ""
}

// newLevels counts the levels of topic that m (a count of prefixes) does
// not hold yet.
func (l *RetainedLimit) newLevels(topic string, m map[uint64]int32) int64 {
	return newPrefixes(l.seed, topic, m)
}

// refuse counts a refusal and logs the first of cl's per minute (never
// the payload).
func (l *RetainedLimit) refuse(cl *mqtt.Client, topic, limit, what string) {
	l.refused.WithLabelValues(limit).Inc()
	if l.logged.Allow(cl.ID, time.Now()) {
		l.log.Warn("retained message refused: over "+retainedLimitKey(limit)+" (first this minute for this client)",
			"client", logtext.Short(cl.ID), "topic", logtext.Short(topic), "limit", limit, "what", what)
	}
}

// retainedLimitKey names the configuration key of a limit.
func retainedLimitKey(limit string) string {
	switch limit {
	case limitDeviceMessages:
		return "mqtt.max_retained_messages_per_device"
	case limitDeviceBytes:
		return "mqtt.max_retained_bytes_per_device"
	case limitMessages:
		return "mqtt.max_retained_messages"
	}
	return "mqtt.max_retained_bytes"
}

// RetainedUsage returns the retained messages counted for owner (a
// device's id; "" for all of them): how many, and the bytes they count
// for (their topics, payloads and properties, and their levels).
func (l *RetainedLimit) RetainedUsage(owner string) (count, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		l.loadLocked()
	}
	if owner == "" {
		return l.total.count, l.total.charged(len(l.levels))
	}
	if u := l.owners[owner]; u != nil {
		return u.count, u.charged(len(u.levels))
	}
	return 0, 0
}

// Owned returns the topics whose retained message owner (a device's id)
// set and is still retained, in no order.
func (l *RetainedLimit) Owned(owner string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		l.loadLocked()
	}
	u := l.owners[owner]
	if owner == "" || u == nil {
		return nil
	}
	topics := make([]string, 0, len(u.topics))
	for topic := range u.topics {
		topics = append(topics, topic)
	}
	return topics
}

// Under returns the topics under devices/{id}/ that hold a retained
// message, whoever set it, in no order.
func (l *RetainedLimit) Under(id string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		l.loadLocked()
	}
	topics := make([]string, 0, len(l.under[id]))
	for topic := range l.under[id] {
		topics = append(topics, topic)
	}
	return topics
}

// deviceOfTopic is the id of devices/{id}/..., or "".
func deviceOfTopic(topic string) string {
	rest, ok := strings.CutPrefix(topic, "devices/")
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, "/")
	if !ok || id == "" {
		return ""
	}
	return id
}

// retainedSize is what a retained message counts for: its topic, payload
// and the properties kept with it.
func retainedSize(pk packets.Packet) int64 {
	p := pk.Properties
	n := len(pk.TopicName) + len(pk.Payload) + len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData)
	for _, u := range p.User {
		n += len(u.Key) + len(u.Val)
	}
	return int64(n)
}

// Describe implements prometheus.Collector.
func (l *RetainedLimit) Describe(ch chan<- *prometheus.Desc) {
	l.refused.Describe(ch)
	ch <- l.bytes
}

// Collect implements prometheus.Collector.
func (l *RetainedLimit) Collect(ch chan<- prometheus.Metric) {
	l.refused.Collect(ch)
	l.mu.Lock()
	b := l.total.charged(len(l.levels))
	l.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(l.bytes, prometheus.GaugeValue, float64(b))
}
