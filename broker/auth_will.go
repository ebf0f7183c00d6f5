package broker

import (
	"reflect"
	"strings"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// brokerTopics are the topics whose messages the broker itself makes or
// rewrites (SPEC §4, §7): a command is recorded and rewritten as it
// passes, a desired twin and a status are the broker's alone. A will
// reaches subscribers without passing the hooks that do this, so no will
// may name them, retained or not.
var brokerTopics = []string{"devices/+/commands/#", "devices/+/twin/desired", "devices/+/status"}

// mayWill reports whether c may leave a will on topic (retained or not:
// the rules are those of a publish, SPEC §5).
func (c *conn) mayWill(topic string) bool {
	// A will's topic is a topic name [MQTT-3.1.3-11]: no wildcard, not
	// empty (nobody could publish to "#": an admin's will there reached
	// every subscriber of # and +).
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	return !withinAny(topic, brokerTopics) && c.allows(topic, true)
}

// checkWill is the engine's OnWill, as cl goes: the will goes out as it is
// if cl's identity may still publish it (mayStillWill; the connection not
// revoked); else it is emptied — a will with no topic reaches no
// subscriber and is not retained (the engine's OnWill cannot refuse).
func (a *Auth) checkWill(cl *mqtt.Client, will mqtt.Will) mqtt.Will {
	if c := a.conn(cl); c != nil && !c.revoked && a.mayStillWill(c, will.TopicName) {
		return will
	}
	a.m.wills.WithLabelValues("send").Inc()
	a.log.Info("will dropped: no longer allowed", "client", cl.ID)
	return mqtt.Will{}
}

// mayStillWill reports whether c's identity, as it is now, may publish a
// will on topic: the device still registered and enabled, the user still
// there, with their role of now.
func (a *Auth) mayStillWill(c *conn, topic string) bool {
	if !c.anonymous {
		id, ok := a.reg.Lookup(c.id.Name)
		if !ok || id.Kind != c.id.Kind {
			return false
		}
		if id.Kind == devices.KindUser && id.Role != c.id.Role {
			now := c.id
			now.Role = id.Role
			c = a.newConn(now, false, c.clientID) // rules by role of now
		}
	}
	return c.mayWill(topic)
}

// Delayed wills. A will with a Will Delay Interval (MQTT 5) waits in the
// engine, keyed by client id, until the delay has passed or a new
// connection with the client id cancels it [MQTT-3.1.3-9]; the engine
// then sends it as it is, checking nothing, and cancels nothing when the
// session ends (it caps the delay at a Session Expiry Interval that the
// CONNECT states, 0 included). MQTT wants it sent when the delay has
// passed or the session ends, whichever comes first [MQTT-3.1.2-8]:
//   - a session that ends with its connection — Session Expiry absent
//     (0), or purged as its connection goes (DELETE /sessions on a live
//     connection, a squatter evicted) — sends its will at once
//     (delayWill);
//   - a session purged while its will waits (offline) ends the wait
//     (endWill): the will goes at once if its identity may still publish
//     it (DELETE /sessions); the identity deleted or disabled, it is
//     dropped: a deleted device's will must not go out in its name after
//     it is gone;
//   - a new connection that takes a live one over cancels the will that
//     one leaves as it ends, also when it leaves it after the new
//     connection's CONNACK cancelled the wills waiting (Auth.OnDisconnect);
//   - a client that connects to another node of a cluster cancels it, as
//     a reconnection here does (movedAway): the engine only knows of
//     its own connections.
// The engine exports no access to its waiting wills (docs/upstream.md);
// Tether reaches them by reflection.

// delayedWillsIndex is the index of the engine's waiting wills
// (Server.loop.willDelayed) in mqtt.Server: the loop pointer's, then the
// field's in it. Nil if this engine version has none: then nothing is
// cancelled and the engine sends every delayed will after its delay.
var delayedWillsIndex = func() [2][]int {
	f, ok := reflect.TypeOf(mqtt.Server{}).FieldByName("loop")
	if !ok || f.Type.Kind() != reflect.Pointer || f.Type.Elem().Kind() != reflect.Struct {
		return [2][]int{}
	}
	w, ok := f.Type.Elem().FieldByName("willDelayed")
	if !ok || w.Type != reflect.TypeOf((*packets.Packets)(nil)) {
		return [2][]int{}
	}
	return [2][]int{f.Index, w.Index}
}()

// delayedWills returns the engine's waiting wills, or nil.
func delayedWills(srv *mqtt.Server) *packets.Packets {
	if delayedWillsIndex[0] == nil {
		return nil
	}
	loop := reflect.ValueOf(srv).Elem().FieldByIndex(delayedWillsIndex[0])
	if loop.IsNil() {
		return nil
	}
	f := loop.Elem().FieldByIndex(delayedWillsIndex[1])
	return *(**packets.Packets)(unsafe.Pointer(f.UnsafeAddr()))
}

// delayWill is the tail's OnWill after checkWill: a will with a delay
// whose session ends with its connection goes at once, undelayed. Without
// it the engine would send the will of a session without expiry after
// the delay, and (no longer listing the client by then) unretained and
// past the hooks: a cluster's other nodes never had it. A purged one
// would wait in endWill for the engine's next sweep, holding up a device
// that evicts a squatter (awaitPurge).
func (a *Auth) delayWill(cl *mqtt.Client, will mqtt.Will) {
	if will.TopicName == "" || cl.Properties.Will.WillDelayInterval == 0 {
		return
	}
	_, purged := a.purgeOnEnd.Load(cl)
	if purged || cl.Properties.Props.SessionExpiryInterval == 0 {
		cl.Properties.Will.WillDelayInterval = 0 // the engine reads it after the hooks
		return
	}
	a.willFrom.Store(cl.ID, cl) // the engine queues it under cl.ID next
}

// takenOverWill reports whether will, delayed, is that of a connection
// whose session another connection has taken over, and if so makes the
// engine drop it (no delay: it goes at once, with no topic, to no one). A
// new connection to the session cancels a waiting will [MQTT-3.1.3-9]:
// the engine deletes the client id's waiting will after the new
// connection's CONNACK, but the old connection's goroutine queues its will
// (under the same client id) whenever it gets to it, which on a loaded
// machine can be after the new connection has itself ended and queued its
// own: the old will then replaced the new one, and went after the delay in
// its place (TestNewConnectionsWillOutlivesTakeover, once in 21 runs at
// load 6). The engine marks the old connection taken over right after it
// stops it, and lists the new one right after that; a will queued before
// either is cancelled by the new connection's CONNACK, as before.
func (a *Auth) takenOverWill(cl *mqtt.Client, will mqtt.Will) bool {
	if will.TopicName == "" || cl.Properties.Will.WillDelayInterval == 0 {
		return false
	}
	if !cl.IsTakenOver() {
		if cur, ok := a.srv.Clients.Get(cl.ID); !ok || cur == cl {
			return false
		}
	}
	cl.Properties.Will.WillDelayInterval = 0 // the engine reads it after the hooks
	a.log.Debug("will cancelled: the session was taken over before its delay passed", "client", cl.ID)
	return true
}

// cancelWill removes the will cl's connection left waiting, if any: a
// newer connection with the client id took the session (on another node:
// movedAway). The engine keeps waiting wills by client id alone: one that
// a later connection with the id left (willFrom) is not cl's, and stays
// (TestNewConnectionsWillOutlivesTakeover).
func (a *Auth) cancelWill(cl *mqtt.Client) {
	if a.wills == nil {
		return
	}
	if v, ok := a.willFrom.Load(cl.ID); ok && v != cl {
		return
	}
	a.wills.Delete(cl.ID)
	a.willFrom.CompareAndDelete(cl.ID, cl)
}

// endWill ends the wait of the will cl's connection left, if it still
// waits, as cl's session is purged: it goes at once if the session's
// identity may still publish it, through the engine (retained if it is,
// through the hooks: the session store, the other nodes), which endWill
// waits for (the engine sends waiting wills once a second), at most
// purgeWait; else it is dropped. cl holds the client id, offline.
func (a *Auth) endWill(cl *mqtt.Client) {
	if a.wills == nil {
		return
	}
	pk, ok := a.wills.Get(cl.ID)
	if !ok {
		return
	}
	if c := a.sessionConn(cl); c == nil || !a.mayStillWill(c, pk.TopicName) {
		a.wills.Delete(cl.ID)
		a.m.wills.WithLabelValues("send").Inc()
		a.log.Info("will dropped: its session was purged", "client", cl.ID)
		return
	}
	if pk.Expiry > time.Now().Unix() {
		// Not due at the engine's current sweep, which therefore
		// leaves it alone: due at its next one.
		pk.Expiry = 0
		a.wills.Add(cl.ID, pk)
		if cur, ok := a.srv.Clients.Get(cl.ID); !ok || cur != cl {
			// A new connection took the session meanwhile; its
			// CONNACK cancels the will [MQTT-3.1.3-9], maybe before
			// the line above put it back.
			a.wills.Delete(cl.ID)
			return
		}
	}
	deadline := time.Now().Add(purgeWait)
	for time.Now().Before(deadline) {
		if _, ok := a.wills.Get(cl.ID); !ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.log.Warn("a purged session's will has not gone yet", "client", cl.ID)
}
