package broker

import (
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/logtext"
)

// Subscriptions per client (mqtt.max_subscriptions_per_client): the
// access hook refuses a SUBSCRIBE filter that would give a client's
// session more than the bound, where it refuses a filter it does not
// allow (OnACLCheck), so that the engine never adds it. What is counted
// is what the engine holds for the session (cl.State.Subscriptions): the
// filters granted since the connection began, those of a session it took
// over, and those of a persistent session restored from the session store
// at start-up. A filter the session holds already is always granted again
// (a re-subscribe, e.g. to change its QoS); the other filters of a
// SUBSCRIBE are granted in order up to the bound, and each one beyond it
// gets reason code 0x97 quota exceeded (3.1.1: 0x80 failure), is counted in
// tether_mqtt_subscriptions_refused_total and logged at most once a
// minute per client. UNSUBSCRIBE frees room. Such a refusal is not an ACL
// denial: it does not count towards bans.

// subsLogEvery is how often a client's refused subscriptions are logged.
const subsLogEvery = time.Minute

// pendingSubscribe is a SUBSCRIBE being answered: its filters, as the
// engine will pass them to OnACLCheck, and which ones were refused for the
// bound (written and read on the client's own goroutine only).
type pendingSubscribe struct {
	filters []string
	over    []bool
}

// limitSubscriptions sets mqtt.max_subscriptions_per_client (0: no
// bound); broker.New calls it before the engine starts.
func (a *Auth) limitSubscriptions(n int) { a.maxSubs = n }

// notesSubscribes reports whether the hook notes the filters of each
// SUBSCRIBE (noteSubscribe): for bans, which count refused subscriptions,
// and for the bounds on subscriptions.
func (a *Auth) notesSubscribes() bool { return a.bans != nil || a.maxSubs > 0 || a.maxLevels > 0 }

// noteSubscribe remembers the filters of a SUBSCRIBE until the engine has
// checked them: OnSubscribed, which the engine calls once it has, forgets
// them. A SUBSCRIBE the engine refuses before (one without filters) is
// forgotten at the client's next packet, or as it disconnects. While
// none is pending, it costs one atomic load per packet, and so do the
// access checks of deliveries (subscribeFilter): the window stays open
// only while a SUBSCRIBE is being checked, not until the subscriber
// sends its next packet, which a client that only receives may not do
// for a keep-alive's time (TestSubscribeWindowsClose).
func (a *Auth) noteSubscribe(cl *mqtt.Client, pk *packets.Packet) {
	if !a.notesSubscribes() {
		return
	}
	if pk.FixedHeader.Type != packets.Subscribe {
		if a.nSubscribing.Load() > 0 {
			a.forgetSubscribe(cl)
		}
		return
	}
	p := &pendingSubscribe{filters: make([]string, len(pk.Filters)), over: make([]bool, len(pk.Filters))}
	for i, f := range pk.Filters {
		p.filters[i] = f.Filter
	}
	if _, loaded := a.subscribing.Swap(cl, p); !loaded {
		a.nSubscribing.Add(1)
	}
}

func (a *Auth) forgetSubscribe(cl *mqtt.Client) {
	if _, ok := a.subscribing.LoadAndDelete(cl); ok {
		a.nSubscribing.Add(-1)
	}
}

// subscribeFilter reports whether the access check of filter for cl is
// that of the i-th filter of the SUBSCRIBE cl is sending, rather than of a
// delivery to cl: the engine passes the filter string of the packet it
// decoded, whose bytes no delivery's topic shares (a topic equal to a
// pending filter is another string).
func (a *Auth) subscribeFilter(cl *mqtt.Client, filter string) (*pendingSubscribe, int, bool) {
	if len(filter) == 0 || a.nSubscribing.Load() == 0 {
		return nil, 0, false
	}
	v, ok := a.subscribing.Load(cl)
	if !ok {
		return nil, 0, false
	}
	p := v.(*pendingSubscribe)
	for i, f := range p.filters {
		if len(f) == len(filter) && unsafe.StringData(f) == unsafe.StringData(filter) {
			return p, i, true
		}
	}
	return nil, 0, false
}

// overSubscriptions reports whether granting filter would pass cl's
// bounds (mqtt.max_subscriptions_per_client, then
// mqtt.max_subscription_levels_per_client: auth_sublevels.go), when
// filter is one of the SUBSCRIBE cl is sending; it marks the filter so
// that OnSubscribed gives it 0x97, and counts and logs the refusal. The
// engine adds each filter it grants before it checks the next one, so
// the count is exact within a packet too.
func (a *Auth) overSubscriptions(cl *mqtt.Client, filter string) bool {
	if a.maxSubs <= 0 && a.maxLevels <= 0 {
		return false
	}
	p, i, ok := a.subscribeFilter(cl, filter)
	if !ok {
		return false
	}
	if _, held := cl.State.Subscriptions.Get(filter); held {
		return false
	}
	n, key, limit := cl.State.Subscriptions.Len(), "", 0
	switch {
	case a.maxSubs > 0 && n >= a.maxSubs:
		a.m.subsRefused.Inc()
		key, limit = "mqtt.max_subscriptions_per_client", a.maxSubs
	case a.overLevels(cl, filter, n):
		a.m.levelsRefused.Inc()
		key, limit = "mqtt.max_subscription_levels_per_client", a.maxLevels
	default:
		return false
	}
	p.over[i] = true
	if a.subsLogged.Allow(cl.ID, time.Now()) {
		a.log.Warn("subscription refused: over "+key+" (first this minute for this client)",
			"client", logtext.Short(cl.ID), "filter", logtext.Short(filter), "limit", limit)
	}
	return true
}

// OnSubscribed forgets the SUBSCRIBE (noteSubscribe), whose filters the
// engine has checked, and gives the filters refused for the bound reason
// code 0x97 quota exceeded rather than the engine's 0x87 for a refused
// access check (3.1.1 has only 0x80 failure, which the engine has set
// already). The engine calls it with the SUBACK's own reason codes, before
// it writes the SUBACK.
func (a *Auth) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	v, ok := a.subscribing.LoadAndDelete(cl)
	if !ok {
		return
	}
	a.nSubscribing.Add(-1)
	if cl.Properties.ProtocolVersion < 5 {
		return
	}
	p := v.(*pendingSubscribe)
	for i, over := range p.over {
		if over && i < len(codes) && codes[i] == packets.ErrNotAuthorized.Code {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
	}
}
