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
// session ends. MQTT wants it sent when the delay has passed or the
// session ends, whichever comes first [MQTT-3.1.2-8]; a session the
// broker ends (purges) ends its will's wait too:
//   - as the connection goes (DELETE /sessions on a live connection, a
//     squatter evicted), its will goes at once, undelayed (delayWill);
//   - once offline (DELETE /sessions), its waiting will goes at once if
//     its identity may still publish it; the identity deleted or
//     disabled, it is dropped (endWill): a deleted device's will must not
//     go out in its name after it is gone. So are those of its sessions
//     the engine no longer holds (clean sessions: dropWillsOf).
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

// waitingWill is who left the will waiting under a client id, and until
// when (Unix seconds).
type waitingWill struct {
	c   *conn
	due int64
}

// delayWill is the tail's OnWill after checkWill: a will with a delay
// whose session is being purged with its connection goes at once; any
// other is noted with its owner for endWill and dropWillsOf.
func (a *Auth) delayWill(cl *mqtt.Client, will mqtt.Will) {
	delay := cl.Properties.Will.WillDelayInterval
	if will.TopicName == "" || delay == 0 || a.wills == nil {
		return
	}
	if _, purged := a.purgeOnEnd.Load(cl); purged {
		// The engine reads the delay after the hooks.
		cl.Properties.Will.WillDelayInterval = 0
		return
	}
	c := a.conn(cl)
	if c == nil {
		return
	}
	now := time.Now().Unix()
	if _, had := a.waiting.Swap(cl.ID, &waitingWill{c: c, due: now + int64(delay)}); had {
		return
	}
	if a.nWaiting.Add(1) < a.waitingSweep.Load() {
		return
	}
	// Forget those whose delay is over (the engine has sent them), at
	// most once per doubling.
	a.waiting.Range(func(k, v any) bool {
		if v.(*waitingWill).due+2 < now && a.waiting.CompareAndDelete(k, v) {
			a.nWaiting.Add(-1)
		}
		return true
	})
	a.waitingSweep.Store(2*a.nWaiting.Load() + 1024)
}

// endWill ends the wait of the will cl's connection left, if it still
// waits, as cl's session is purged: it goes at once if its identity may
// still publish it, through the engine (retained if it is, through the
// hooks: the session store, the other nodes), which endWill waits for
// (the engine sends waiting wills once a second), at most purgeWait; else
// it is dropped. cl holds the client id.
func (a *Auth) endWill(cl *mqtt.Client) {
	if a.wills == nil {
		return
	}
	v, _ := a.waiting.LoadAndDelete(cl.ID)
	if v != nil {
		a.nWaiting.Add(-1)
	}
	pk, ok := a.wills.Get(cl.ID)
	if !ok {
		return
	}
	if v == nil || !a.mayStillWill(v.(*waitingWill).c, pk.TopicName) {
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

// dropWillsOf drops the waiting wills that identity name left, as it is
// deleted or disabled, those of sessions the engine no longer holds
// included (clean sessions end with their connection; their wills wait
// all the same).
func (a *Auth) dropWillsOf(name string) {
	if a.wills == nil {
		return
	}
	a.waiting.Range(func(k, v any) bool {
		if c := v.(*waitingWill).c; !c.anonymous && c.id.Name == name && a.waiting.CompareAndDelete(k, v) {
			a.nWaiting.Add(-1)
			if _, ok := a.wills.Get(k.(string)); ok {
				a.wills.Delete(k.(string))
				a.m.wills.WithLabelValues("send").Inc()
				a.log.Info("will dropped: its identity is gone", "client", k)
			}
		}
		return true
	})
}
