package broker

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SessionPurger deletes what a session store holds for a client id: the
// session, its subscriptions, its queued and inflight messages. It must
// not block (queue the deletion); a deletion queued after the session's
// last write wins over it.
type SessionPurger interface {
	PurgeSession(clientID string)
}

// purgeSession ends the session cl holds in the engine — subscriptions,
// queued and inflight messages, will — and deletes it from the session
// store, so that whoever connects next with its client id (the device
// registered again, anyone) starts clean: no session present, nothing
// queued. It is the one place sessions are purged; cl is offline (or
// its connection has ended).
func (a *Auth) purgeSession(cl *mqtt.Client) {
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	a.srv.UnsubscribeClient(cl) // the store's hook deletes the subscriptions
	cl.ClearInflights()
	if cur, ok := a.srv.Clients.Get(cl.ID); ok && cur != cl {
		return // a newer connection holds the client id and its session
	}
	a.srv.Clients.Delete(cl.ID)
	if v, ok := a.sessions.Load(cl.ID); ok {
		a.sessions.CompareAndDelete(cl.ID, v)
	}
	if a.purger != nil {
		a.purger.PurgeSession(cl.ID)
	}
	a.m.purged.Inc()
	a.log.Info("session purged", "client", cl.ID)
}

// purgeTail is the hook that Broker.New adds after every other, for the
// access hook's last word on a client that goes:
//   - OnWill: the will goes out only if the identity may still publish it
//     (checkWill), after any other hook has changed it;
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
	return t.a.checkWill(cl, will), nil
}

// OnDisconnect purges the session of a client whose identity no longer
// exists or is disabled. Sessions restored at start-up are left to claim.
func (t *purgeTail) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	defer t.a.ending.Delete(cl) // the engine's hooks are done with cl
	if !t.a.started.Load() || cl.Net.Inline || len(cl.Properties.Username) == 0 {
		return
	}
	if _, ok := t.a.reg.Lookup(string(cl.Properties.Username)); !ok {
		t.a.purgeSession(cl)
	}
}

// tail returns the hook to add after all others.
func (a *Auth) tail() mqtt.Hook {
	a.tailed.Store(true)
	return &purgeTail{a: a}
}

// refusedAck is the PUBACK (QoS 1) or PUBREC (QoS 2) that refuses pk with
// 0x87 not authorized.
func refusedAck(pk packets.Packet) packets.Packet {
	t := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		t = packets.Pubrec
	}
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: t},
		PacketID:    pk.PacketID,
		ReasonCode:  packets.ErrNotAuthorized.Code,
		Properties:  packets.Properties{ReasonString: packets.ErrNotAuthorized.Reason},
	}
}
