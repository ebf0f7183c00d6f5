package sessions

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// persistIndex holds the subscriptions of persistent sessions, so that
// OnPublish can tell cheaply that a QoS 1/2 message reaches none of them
// (the common case: devices on clean sessions, dashboards, the bench) and
// skip the scan of the engine's subscribers and the commit wait.
//
// It must never miss a subscription the engine holds for a persistent
// session (that message would not be recorded before its PUBACK); it may
// hold more than that (a stale entry only costs the full scan). So entries
// are added wherever a persistent session can gain a subscription —
// SUBSCRIBE, session establishment (a session inherited from a
// connection that was not persistent), disconnection, and loading from
// the store — and removed only where the engine removes them: UNSUBSCRIBE,
// the engine clearing a session (UnsubscribeClient reports through
// OnUnsubscribed), and session expiry.
type persistIndex struct {
	topics *mqtt.TopicsIndex
	n      atomic.Int64 // entries in topics
}

func newPersistIndex() *persistIndex {
	return &persistIndex{topics: mqtt.NewTopicsIndex()}
}

// add indexes sub for client. Shared subscriptions are left out: OnPublish
// does not record their recipients (see pendingOps).
func (x *persistIndex) add(client string, sub packets.Subscription) {
	if mqtt.IsSharedFilter(sub.Filter) {
		return
	}
	if x.topics.Subscribe(client, sub) {
		x.n.Add(1)
	}
}

// addAll indexes every subscription cl's session holds.
func (x *persistIndex) addAll(cl *mqtt.Client) {
	for _, sub := range cl.State.Subscriptions.GetAll() {
		x.add(cl.ID, sub)
	}
}

func (x *persistIndex) remove(client, filter string) {
	if x.n.Load() == 0 || mqtt.IsSharedFilter(filter) {
		return
	}
	if x.topics.Unsubscribe(filter, client) {
		x.n.Add(-1)
	}
}

// matches reports whether a message on topic may reach a persistent
// session's subscription. With no persistent subscriptions at all it is
// one atomic load.
func (x *persistIndex) matches(topic string) bool {
	if x.n.Load() == 0 {
		return false
	}
	return len(x.topics.Subscribers(topic).Subscriptions) > 0
}
