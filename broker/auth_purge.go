package broker

import (
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SessionPurger deletes what a session store holds for a client id: the
// session, its subscriptions, its queued and inflight messages. It must
// not block (queue the deletion); a deletion queued after the session's
// last write wins over it.
type SessionPurger interface {
	PurgeSession(clientID string)
	// Barrier returns a channel closed once everything queued so far is
	// committed (or has failed).
	Barrier() <-chan struct{}
}

// purgeSession ends the session cl holds in the engine — subscriptions,
// queued and inflight messages, will (one still waiting out its delay goes
// at once if its identity may still publish it, else never: endWill) —
// and deletes it from the session store, so that whoever connects next
// with its client id (the device registered again, anyone) starts clean:
// no session present, nothing queued. It is the one place sessions are purged; cl is offline (or
// its connection has ended).
func (a *Auth) purgeSession(cl *mqtt.Client) {
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	if cur, ok := a.srv.Clients.Get(cl.ID); ok && cur != cl {
		// A newer connection holds the client id and its session: its
		// subscriptions are in the topic index under the same id, which
		// unsubscribing cl would take from it.
		cl.ClearInflights()
		return
	}
	a.endWill(cl)
	a.srv.UnsubscribeClient(cl) // the store's hook deletes the subscriptions
	cl.ClearInflights()
	a.srv.Clients.Delete(cl.ID)
	a.unheld(cl)
	if v, ok := a.sessions.Load(cl.ID); ok {
		a.sessions.CompareAndDelete(cl.ID, v)
	}
	if a.purger != nil {
		a.purger.PurgeSession(cl.ID)
	}
	a.m.purged.Inc()
	a.log.Info("session purged", "client", cl.ID)
}

// purgeSessionsOf purges the sessions of the identity name (deleted or
// disabled): those offline now at once; those whose connection is live
// or still ending are marked, and purgeTail purges each as its
// connection ends, whatever the registry says by then.
func (a *Auth) purgeSessionsOf(name string) {
	var now []*mqtt.Client
	a.endMu.Lock()
	for id, cl := range a.srv.Clients.GetAll() {
		if cl.Net.Inline || a.sessionOwnerName(id, cl) != name {
			continue
		}
		if a.markIfLive(cl) == nil {
			now = append(now, cl)
		}
	}
	a.endMu.Unlock()
	for _, cl := range now {
		a.purgeSession(cl)
	}
}

// markIfLive marks cl's session to be purged when its connection ends
// (purgeTail) if that connection is live or still ending, and returns
// the mark: a channel closed once the session has been purged. Nil when
// cl is offline, for the caller to purge at once (purgeSession) once it
// has let go of endMu, which it holds.
func (a *Auth) markIfLive(cl *mqtt.Client) chan struct{} {
	_, connected := a.clients.Load(cl)
	_, ending := a.ending.Load(cl)
	if connected || ending || !cl.Closed() {
		return a.mark(cl)
	}
	return nil
}

// mark marks cl's session to be purged when its connection ends and
// returns the mark (a mark already there stays). endMu is held.
func (a *Auth) mark(cl *mqtt.Client) chan struct{} {
	v, _ := a.purgeOnEnd.LoadOrStore(cl, make(chan struct{}))
	return v.(chan struct{})
}

// markPurge marks cl's session to be purged when its connection ends.
func (a *Auth) markPurge(cl *mqtt.Client) {
	a.endMu.Lock()
	a.mark(cl)
	a.endMu.Unlock()
}

// DeleteSession ends the session the engine holds under clientID, whoever
// owns it, at an admin's request (DELETE /api/v1/sessions/{clientId}), by
// the same purge as a deleted device's: an offline session is purged at
// once; a live connection is sent DISCONNECT 0x98 administrative action
// (MQTT 5; an MQTT 3 connection is closed, having no server DISCONNECT)
// and its session purged as the connection ends, which DeleteSession
// waits for, at most purgeWait. A reconnection meanwhile waits for that
// purge (awaitPurge) and starts clean: no session present, nothing of
// the old queue, subscriptions or inflight messages. The purge deletes the
// session from the session store too (SessionPurger), and DeleteSession
// waits, at most purgeWait again, for that to be committed: a restart,
// even a crash, does not bring it back. found is false when the engine
// holds no session under clientID (its own inline clients hold none).
//
// 0x98, not 0x8E (session taken over): no other connection took the
// session; an administrator ended it.
func (a *Auth) DeleteSession(clientID string) (found bool) {
	if a.srv == nil {
		return false
	}
	// A connection that took the session over as it was purged offline
	// holds what it inherited: around again, for that one.
	for range 3 {
		cl, ok := a.srv.Clients.Get(clientID)
		if !ok || cl.Net.Inline {
			return found
		}
		found = true
		a.endMu.Lock()
		done := a.markIfLive(cl)
		a.endMu.Unlock()
		if done == nil {
			a.purgeSession(cl)
			if !cl.IsTakenOver() {
				a.awaitStore(clientID)
				return true
			}
			continue
		}
		a.log.Info("disconnecting a client whose session was deleted", "client", clientID)
		a.hangUp(cl, packets.ErrAdministrativeAction)
		t := time.NewTimer(purgeWait)
		select {
		case <-done:
		case <-t.C:
			a.log.Warn("a deleted session's connection has not ended yet: its session goes when it does", "client", clientID)
		}
		t.Stop()
		a.awaitStore(clientID)
		return true
	}
	a.awaitStore(clientID)
	return found
}

// hangUp ends cl's connection for code as end does (a DISCONNECT first
// only to an MQTT 5 client whose CONNACK has gone), but by closing its
// network connection under the engine instead of stopping the client:
// the engine's reader then meets a lost connection wherever it is and
// publishes the will, as MQTT wants when the server closes a connection
// [MQTT-3.1.2-8] (still checked by checkWill). A Stop that finds the
// reader between two packets ends the connection as a normal
// disconnection, without the will. The DISCONNECT's write is bounded: a
// client that reads nothing must not hold the caller up.
func (a *Auth) hangUp(cl *mqtt.Client, code packets.Code) {
	if cl.Net.Conn == nil {
		cl.Stop(code)
		return
	}
	if _, ok := a.established.Load(cl); ok && cl.Properties.ProtocolVersion == 5 {
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		})
	}
	_ = cl.Net.Conn.Close()
}

// awaitStore waits, at most purgeWait, until the session store has
// committed what it was given, a purge of clientID among it.
func (a *Auth) awaitStore(clientID string) {
	if a.purger == nil {
		return
	}
	t := time.NewTimer(purgeWait)
	defer t.Stop()
	select {
	case <-a.purger.Barrier():
	case <-t.C:
		a.log.Warn("the session store has not yet committed a deleted session's removal", "client", clientID)
	}
}

// awaitPurge waits, at most purgeWait, while the session under client id
// is marked to be purged and its connection is still ending: a device
// enabled again at once and reconnecting must not inherit what its
// disabling purges.
func (a *Auth) awaitPurge(id string) {
	deadline := time.Now().Add(purgeWait)
	for {
		ex, ok := a.srv.Clients.Get(id)
		if !ok {
			return
		}
		if _, marked := a.purgeOnEnd.Load(ex); !marked || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// purgeWait bounds awaitPurge: the end of a connection's hooks.
const purgeWait = 2 * time.Second

// sessionOwnerName names the identity whose session cl (under client id)
// is: its connection's, else the one it last connected with, else its
// stored username; "" for an anonymous one.
func (a *Auth) sessionOwnerName(id string, cl *mqtt.Client) string {
	if c := a.conn(cl); c != nil {
		if c.anonymous {
			return ""
		}
		return c.id.Name
	}
	if v, ok := a.sessions.Load(id); ok {
		if c := v.(*conn); !c.anonymous {
			return c.id.Name
		}
	}
	return string(cl.Properties.Username)
}

// purgeTail is the hook that Broker.New adds after every other, for the
// access hook's last word on a client that goes:
//   - OnWill: the will goes out only if the identity may still publish it
//     (checkWill), after any other hook has changed it; one with a delay
//     goes at once if its session ends with the connection (delayWill);
//   - OnDisconnect: the session of an identity deleted or disabled meanwhile
//     is purged, after the session store has written it as offline (so
//     the purge is the last write).
type purgeTail struct {
	mqtt.HookBase
	a *Auth
}

func (t *purgeTail) ID() string { return "tether-auth-tail" }

func (t *purgeTail) Provides(b byte) bool { return b == mqtt.OnWill || b == mqtt.OnDisconnect }

// OnWill implements mqtt.Hook.
func (t *purgeTail) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	will = t.a.checkWill(cl, will)
	if t.a.takenOverWill(cl, will) {
		return mqtt.Will{}, nil
	}
	t.a.delayWill(cl, will)
	return will, nil
}

// OnDisconnect purges the session of a client marked to be purged
// (purgeSessionsOf), or whose identity no longer exists or is disabled.
// Sessions restored at start-up are left to claim.
func (t *purgeTail) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	a := t.a
	a.endMu.Lock()
	mark, purge := a.purgeOnEnd.LoadAndDelete(cl)
	if !purge && a.started.Load() && !cl.Net.Inline && len(cl.Properties.Username) > 0 {
		_, ok := a.reg.Lookup(string(cl.Properties.Username))
		purge = !ok
	}
	if !purge {
		// The engine's hooks are done with cl: from now on a purge
		// (purgeSessionsOf) takes it as offline.
		a.ending.Delete(cl)
	}
	a.endMu.Unlock()
	if purge {
		a.purgeSession(cl)
		a.ending.Delete(cl)
		if mark != nil {
			close(mark.(chan struct{})) // DeleteSession waits for it
		}
	}
}

// tail returns the hook to add after all others.
func (a *Auth) tail() mqtt.Hook {
	a.tailed.Store(true)
	return &purgeTail{a: a}
}
