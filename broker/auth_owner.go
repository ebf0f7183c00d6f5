package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// Session ownership (SPEC §5): a session, live or persistent, belongs to
// the identity that created it (kind and name; anonymous clients are one
// identity). Another identity connecting with its client id is refused
// with 0x85 (3.1.1: 0x02) before the engine looks at the session, so it
// inherits nothing and a live owner is not kicked off. The same identity
// reconnecting takes the session over as MQTT says.
//
// The owner is known from the connection (clients), from the identity the
// session last connected with (sessions), or, for a session restored from
// storage after a restart, from its stored username: OnConnect sets every
// session's username to its identity's name (nil for anonymous), and
// device ids and user names share one namespace, so the name says which
// identity it is. No table of its own: ownership is stored with the
// session, whichever store holds it.

// claim is a connection that passed OnConnect and is not yet in the
// engine's client list.
type claim struct {
	cl *mqtt.Client
	c  *conn
}

// brokerOwner owns the engine's own inline clients: nobody may take their
// client ids.
var brokerOwner = &conn{revoked: true, id: devices.Identity{Kind: "broker"}}

// claim reports whether c may connect as cl with cl's client id, and if
// so records the claim until the engine lists cl (OnSessionEstablished)
// or it goes. A session whose owner is unknown (a stored session of an
// identity that no longer exists), and another identity's offline session
// under a device's id when that device connects, are purged first: the
// newcomer starts clean.
//
// It returns the code to refuse the CONNECT with: 0x85 client identifier
// not valid for another identity's session, 0x97 quota exceeded for a
// session past mqtt.max_sessions_per_user (overSessions); success
// otherwise.
func (a *Auth) claim(cl *mqtt.Client, c *conn) packets.Code {
	a.ownMu.Lock()
	defer a.ownMu.Unlock()
	if !a.mayOwn(cl.ID, cl, c) {
		return packets.ErrClientIdentifierNotValid
	}
	if a.overSessions(cl, c) {
		return packets.ErrQuotaExceeded
	}
	a.claims.Store(cl.ID, &claim{cl: cl, c: c})
	if !c.anonymous && c.id.Kind != devices.KindDevice && persists(cl) {
		a.holdSession(c.id.Name, cl.ID)
	}
	return packets.CodeSuccess
}

// mayOwn is claim's decision (ownMu held): whether c may have client id's
// session, self being c's own connection if any; it purges what claim
// says it purges.
func (a *Auth) mayOwn(id string, self *mqtt.Client, c *conn) bool {
	owner, ex := a.ownerOf(id, self)
	switch {
	case ex != nil && owner == nil:
		a.log.Info("purging a stored session nobody owns", "client", id)
		a.purgeSession(ex)
	case owner != nil && !owner.sameOwner(c) && ex != nil && ex.Closed() && owner != brokerOwner &&
		!c.anonymous && c.id.Kind == devices.KindDevice:
		// A device's client id is its id: a person's (or an anonymous)
		// session under it, left from before the device was registered,
		// goes, so that nobody can squat a device's client id.
		a.log.Info("purging another identity's session under a device's id", "client", id, "kind", owner.kind())
		a.purgeSession(ex)
	case owner != nil && !owner.sameOwner(c):
		a.log.Info("refused a connection to another identity's session", "client", id,
			"kind", c.kind(), "name", c.id.Name)
		return false
	}
	return true
}

// deny refuses a CONNECT whose credentials were right but which asks for
// something its identity may not have (a will, another's session): counted
// like a failed login, but not slowed down as a guess at credentials.
func (a *Auth) deny(cl *mqtt.Client, code packets.Code, reason string) error {
	a.m.failures.WithLabelValues(reason, Transport(cl)).Inc()
	return Refuse(a.srv, cl, code)
}

// unclaim drops cl's claim, if it still holds one.
func (a *Auth) unclaim(cl *mqtt.Client) {
	if v, ok := a.claims.Load(cl.ID); ok && v.(*claim).cl == cl {
		a.claims.CompareAndDelete(cl.ID, v)
	}
}

// ownerOf returns the owner of the session (or claim) that client id has
// besides self. owner is nil when there is none; when ex (the engine's
// client holding the session) is not nil and owner is, nobody knows whose
// it is.
func (a *Auth) ownerOf(id string, self *mqtt.Client) (owner *conn, ex *mqtt.Client) {
	if v, ok := a.claims.Load(id); ok {
		cm := v.(*claim)
		if cm.cl != self && !cm.cl.Closed() {
			return cm.c, nil
		}
	}
	ex, ok := a.srv.Clients.Get(id)
	if !ok || ex == self {
		return nil, nil
	}
	if ex.Net.Inline {
		return brokerOwner, ex
	}
	if c := a.conn(ex); c != nil {
		return c, ex // connected (or being disconnected)
	}
	if v, ok := a.sessions.Load(id); ok {
		return v.(*conn), ex
	}
	return a.restoredOwner(ex), ex
}

// restoredOwner returns the owner of a session restored from storage, from
// its username (see above), as it stands now: a registered device whose id
// is the client id, a user with their current role, or anonymous (no
// name) when anonymous access is allowed. Nil when none of these.
func (a *Auth) restoredOwner(cl *mqtt.Client) *conn {
	name := string(cl.Properties.Username)
	if name == "" {
		if a.anon {
			return a.newConn(devices.Identity{}, true, cl.ID)
		}
		return nil
	}
	id, _ := a.reg.Lookup(name)
	switch {
	case id.Kind == devices.KindDevice && name == cl.ID, id.Kind == devices.KindUser:
		return a.newConn(id, false, cl.ID)
	}
	return nil
}

// evictSquatter ends the live connection of another identity (a person,
// or an anonymous client) that holds a device's client id when that
// device connects, and marks its session to be purged as it ends: it
// connected before the device was registered (a device's id is refused
// to others since), and must not keep the device out nor hand it its
// session. OnConnect then waits for the purge (awaitPurge), and claim
// finds the client id free. It is hung up (hangUp), not stopped (end):
// its will goes, as for any connection the server closes, at once since
// its session ends with it (delayWill); a Stop could end it as a normal
// disconnection, without the will (TestEvictedSquatterWillGoes).
func (a *Auth) evictSquatter(cl *mqtt.Client, c *conn) {
	if c.anonymous || c.id.Kind != devices.KindDevice || cl.ID != c.id.Name {
		return
	}
	ex, ok := a.srv.Clients.Get(cl.ID)
	if !ok || ex == cl || ex.Net.Inline || ex.Closed() {
		return
	}
	o := a.conn(ex)
	if o == nil || o.sameOwner(c) {
		return
	}
	a.log.Info("disconnecting another identity's connection under a device's id", "client", cl.ID, "kind", o.kind())
	a.markPurge(ex)
	a.hangUp(ex, packets.ErrSessionTakenOver)
}

// sameOwner reports whether c and o are one identity.
func (c *conn) sameOwner(o *conn) bool {
	if c.anonymous || o.anonymous {
		return c.anonymous && o.anonymous
	}
	return c.id.Kind == o.id.Kind && c.id.Name == o.id.Name
}

// kind is "anonymous" or the identity's kind, for logs.
func (c *conn) kind() string {
	if c.anonymous {
		return "anonymous"
	}
	return c.id.Kind
}
