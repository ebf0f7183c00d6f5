package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	topicpkg "github.com/tether-iot/tether/devices/topic"
)

// Subscription levels per client (mqtt.max_subscription_levels_per_client):
// mqtt.max_subscriptions_per_client counts filters and
// mqtt.max_topic_levels bounds each one's levels, but each level is a
// node of the engine's topic index, some 600 bytes: 1,000 filters of 32
// levels took 20 MB per client, 200 MB for a viewer's 10 persistent
// sessions, restored at every start. This bound counts the levels a
// client's session's filters need, each prefix once however many of its
// filters share it (a/b/c and a/b/d need 4: a, a/b, a/b/c, a/b/d), as the
// engine keeps one node per prefix (BenchmarkSubscriptionPrefixCost:
// 1,000 filters of 32 levels cost 20 KB each with no level shared, 1.2 KB
// each with the first 31 shared); a shared subscription counts as its
// filter, without $share/{group}, as the engine indexes it. A node
// another client's filter needs too still counts for this one: it is
// what its filters would cost on their own.
//
// It is checked where mqtt.max_subscriptions_per_client is (auth_subs.go),
// after it, with the same answers: a SUBSCRIBE filter that would take the
// session past the bound gets 0x97 quota exceeded (3.1.1: 0x80), the
// packet's other filters are granted in order while they fit, a filter
// the session holds already is always granted again and costs nothing
// new, and an UNSUBSCRIBE frees the levels no other filter of the session
// needs. Refusals are counted in
// tether_mqtt_subscription_levels_refused_total and logged with those of
// the sibling bound, at most once a minute per client; they are not ACL
// denials.
//
// What is counted is what the engine holds for the session
// (cl.State.Subscriptions): the filters granted on this connection, those
// of a session it took over or resumed, and those of a persistent session
// restored at start-up or taken from another node of a cluster (per node,
// as the sibling bound). A session that holds n filters needs at most n
// times mqtt.max_topic_levels levels, so below the bound over that (250
// filters at the defaults) nothing is counted and a SUBSCRIBE costs
// nothing more. From there on the connection keeps a count of its
// session's prefixes, read from the engine once (the filters its session
// holds then) and kept up to date on each filter it is granted and each
// it unsubscribes: a map lookup per level, whatever the number of filters
// (BenchmarkSubscriptionLevels). The count goes with the connection: the
// next one, after a restart, a take-over, an expiry or an admin's
// DELETE /sessions, reads the engine again.
//
// A session restored at start-up may hold more than a bound allows, when
// the bound was lowered since it subscribed: it keeps its filters (one it
// holds is granted again), and each new filter is refused until
// UNSUBSCRIBEs bring it back under the bound. Such sessions are counted
// in tether_mqtt_sessions_over_subscription_bound_total{limit} and
// logged once at start-up (checkRestored); one over the level bound
// never takes the shortcut above, as its filters may be deeper than
// mqtt.max_topic_levels is now.

// subLevels is one connection's count of the prefixes its session's
// filters need, once it has many filters (see above).
type subLevels struct {
	// mu guards the fields below: the connection's own goroutine changes
	// them, and another's clearing its session (a take-over, a purge)
	// may too.
	mu sync.Mutex
	// filters are the filters counted, by the engine's name (with
	// $share/{group}).
	filters map[string]struct{}
	// prefixes counts, for each prefix of the filters (without
	// $share/{group}), the filters that need it.
	prefixes map[uint64]int32
}

// limitSubscriptionLevels sets mqtt.max_subscription_levels_per_client
// (0: no bound) and mqtt.max_topic_levels (0: no bound), under which a
// session's filters need no count; broker.New calls it before the engine
// starts.
func (a *Auth) limitSubscriptionLevels(levels, topicLevels int) {
	a.maxLevels, a.topicLevels = levels, topicLevels
}

// overLevels reports whether granting filter, which cl's session does not
// hold and which the access check allows, would take the session past
// mqtt.max_subscription_levels_per_client; if not, the filter is counted
// as held (the engine adds it as soon as the check returns). held is the
// number of filters the session holds.
func (a *Auth) overLevels(cl *mqtt.Client, filter string, held int) bool {
	if a.maxLevels <= 0 {
		return false
	}
	var s *subLevels
	if v, ok := a.subLevels.Load(cl); ok {
		s = v.(*subLevels)
	} else if a.topicLevels > 0 && (held+1)*a.topicLevels <= a.maxLevels && !a.wasRestoredOver(cl.ID) {
		return false // they cannot need more
	} else {
		s = a.countLevels(cl)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.filters[filter]; ok {
		return false
	}
	f := topicpkg.Unshare(filter)
	if int64(len(s.prefixes))+newPrefixes(a.levelSeed, f, s.prefixes) > int64(a.maxLevels) {
		return true
	}
	s.filters[filter] = struct{}{}
	forPrefixes(a.levelSeed, f, func(h uint64) { s.prefixes[h]++ })
	return false
}

// wasRestoredOver reports whether the session of id was restored over
// mqtt.max_subscription_levels_per_client (checkRestored).
func (a *Auth) wasRestoredOver(id string) bool {
	if a.nRestoredOver.Load() == 0 {
		return false
	}
	_, ok := a.restoredOver.Load(id)
	return ok
}

// checkRestored counts (and logs, once) the sessions the engine restored
// at start-up that hold more than mqtt.max_subscriptions_per_client or
// mqtt.max_subscription_levels_per_client allow; OnStarted calls it.
func (a *Auth) checkRestored() {
	if a.srv == nil || a.maxSubs <= 0 && a.maxLevels <= 0 {
		return
	}
	var overSubs, overLevels int
	for id, cl := range a.srv.Clients.GetAll() {
		subs := cl.State.Subscriptions.GetAll()
		if a.maxSubs > 0 && len(subs) > a.maxSubs {
			overSubs++
			a.m.overBound.WithLabelValues("max_subscriptions_per_client").Inc()
		}
		if a.maxLevels <= 0 || len(subs) == 0 {
			continue
		}
		prefixes := map[uint64]int32{}
		for filter := range subs {
			forPrefixes(a.levelSeed, topicpkg.Unshare(filter), func(h uint64) { prefixes[h]++ })
		}
		if len(prefixes) > a.maxLevels {
			overLevels++
			a.m.overBound.WithLabelValues("max_subscription_levels_per_client").Inc()
			a.restoredOver.Store(id, struct{}{})
			a.nRestoredOver.Add(1)
		}
	}
	if overSubs+overLevels > 0 {
		a.log.Warn("sessions restored over a subscription bound keep their filters; their new filters are refused until they are under it",
			"over_max_subscriptions_per_client", overSubs, "max_subscriptions_per_client", a.maxSubs,
			"over_max_subscription_levels_per_client", overLevels, "max_subscription_levels_per_client", a.maxLevels)
	}
}

// countLevels counts the prefixes of the filters cl's session holds now
// and keeps the count for the connection.
func (a *Auth) countLevels(cl *mqtt.Client) *subLevels {
	s := &subLevels{filters: map[string]struct{}{}, prefixes: map[uint64]int32{}}
	for filter := range cl.State.Subscriptions.GetAll() {
		s.filters[filter] = struct{}{}
		forPrefixes(a.levelSeed, topicpkg.Unshare(filter), func(h uint64) { s.prefixes[h]++ })
	}
	a.subLevels.Store(cl, s)
	return s
}

// OnUnsubscribed frees the levels of the filters the engine has dropped
// from cl's session (an UNSUBSCRIBE, or the engine clearing the session)
// that no other of its filters needs.
func (a *Auth) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	v, ok := a.subLevels.Load(cl)
	if !ok {
		return
	}
	s := v.(*subLevels)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range pk.Filters {
		if _, ok := s.filters[f.Filter]; !ok {
			continue // not held (the same filter twice in one packet)
		}
		delete(s.filters, f.Filter)
		forPrefixes(a.levelSeed, topicpkg.Unshare(f.Filter), func(h uint64) { unref(s.prefixes, h) })
	}
}

// forgetLevels drops the count of a connection that has ended.
func (a *Auth) forgetLevels(cl *mqtt.Client) {
	if a.maxLevels > 0 {
		a.subLevels.Delete(cl)
	}
}
