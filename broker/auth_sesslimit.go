package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/logevery"
)

// Persistent sessions per user (mqtt.max_sessions_per_user): a persistent
// session (3.1.1 without clean session, MQTT 5 with a Session Expiry
// Interval) outlives its connection for up to mqtt.max_session_expiry,
// in memory with its subscriptions (up to mqtt.max_subscriptions_per_client)
// and on disk, and is loaded again at every start. A device has one, under
// its id; but a person may connect under any client id, so a viewer
// connecting again and again under new client ids, each time subscribing
// and leaving, made as many sessions as it liked: 50 sessions of 1,000
// subscriptions took 320 MB in 7 seconds, for a week, restarts included.
//
// So a viewer or an operator holds at most the bound of persistent
// sessions, online or offline: a CONNECT that asks for one more under a
// new client id is refused with CONNACK 0x97 quota exceeded (3.1.1: 0x03
// server unavailable), logged at most once a minute per user, counted in
// tether_auth_failures_total{reason="session_limit"}. Taking over one of
// its own sessions, and a session that ends with its connection, are
// always allowed. Admins are not held to it (they manage the broker, and
// may delete sessions: DELETE /api/v1/sessions/{clientId}), nor
// anonymous clients where allowed (they may publish anywhere already);
// devices hold one session, their id's. In a cluster it is counted per
// node.

// limitSessions sets mqtt.max_sessions_per_user (0: no bound); broker.New
// calls it before the engine starts.
func (a *Auth) limitSessions(n int) {
	a.maxSessions = n
	a.sessionsLogged = logevery.New(time.Minute)
}

// persists reports whether cl's session outlives its connection, as the
// engine decides when the connection ends.
func persists(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// The persistent sessions of each name are indexed (heldIndex), so that
// counting a user's sessions costs that user's sessions, not every client
// the engine holds: a viewer connecting again and again under a
// persistent session made every one of its CONNECTs read all the
// engine's clients under ownMu, 100,000 of them on a big broker.
//
// The index is a superset: every client id whose session may count
// towards name is in name's set. Devices' sessions are left out (about
// 300 bytes each): a user's name is never a registered device's id, and
// a device's sessions go with it. A persistent session enters the engine
// only through a CONNECT's claim (indexed there, under the identity's
// name, which OnConnect makes the session's username) or restored from
// the session store at start-up (the engine's loadClients calls
// OnDisconnect for each one, which indexes it under its stored
// username); a session becomes persistent in no other way (a DISCONNECT
// may lower the Session Expiry Interval to 0, never raise it from 0).
// Each count checks its candidates against the engine and the claims
// (heldBy), and drops those that no longer count; the transitions that
// end one drop it at once (unheld): the session ending with its
// connection (OnDisconnect with expire: a clean session, or one taken
// over by a clean start), its expiry (OnClientExpired), its purge (an
// admin's delete, its identity deleted or disabled). A set also drops
// its stale entries whenever it has doubled since it last did (holdSession),
// so that a path that removes a session without telling leaves at most
// as many stale entries as there are live ones.
type heldIndex struct {
	mu   sync.Mutex
	sets map[string]*heldSet
}

// heldSet is the client ids of one name's persistent sessions (and
// claims of one); prune is the size at which holdSession next drops its stale
// entries.
type heldSet struct {
	ids   map[string]struct{}
	prune int
}

// holdSession indexes client id under name, whose persistent session it may
// hold (or be about to). Anonymous sessions (no name) are never counted
// and not indexed.
func (a *Auth) holdSession(name, id string) {
	if name == "" {
		return
	}
	h := &a.held
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sets == nil {
		h.sets = map[string]*heldSet{}
	}
	s := h.sets[name]
	if s == nil {
		s = &heldSet{ids: map[string]struct{}{}, prune: 16}
		h.sets[name] = s
	}
	s.ids[id] = struct{}{}
	if len(s.ids) >= s.prune {
		// id itself stays: a restored session is indexed before the
		// engine lists it.
		for old := range s.ids {
			if old != id && !a.stillHeld(name, old, nil) {
				delete(s.ids, old)
			}
		}
		s.prune = max(16, 2*len(s.ids))
	}
}

// unheld drops cl's client id from the index of its username unless
// another client (a claim, or the engine's client under that id) still
// holds a persistent session there: gone is ending, expiring or purged.
func (a *Auth) unheld(gone *mqtt.Client) {
	name := string(gone.Properties.Username)
	h := &a.held
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sets[name]
	if s == nil {
		return
	}
	if _, ok := s.ids[gone.ID]; ok && !a.stillHeld(name, gone.ID, gone) {
		a.dropHeld(name, s, gone.ID)
	}
}

// dropHeld removes id from name's set s, and the set once empty (h.mu
// held).
func (a *Auth) dropHeld(name string, s *heldSet, id string) {
	delete(s.ids, id)
	if len(s.ids) == 0 {
		delete(a.held.sets, name)
	}
}

// stillHeld (held.mu held) reports whether client id may hold a
// persistent session of name's, gone aside: a live claim of a persistent
// session by an identity of that name, or the engine's persistent session
// under that username. The claim is read first: a claim is dropped only
// once the engine lists its client.
func (a *Auth) stillHeld(name, id string, gone *mqtt.Client) bool {
	if v, ok := a.claims.Load(id); ok {
		if cm := v.(*claim); cm.cl != gone && !cm.cl.Closed() && persists(cm.cl) && !cm.c.anonymous && cm.c.id.Name == name {
			return true
		}
	}
	ex, ok := a.srv.Clients.Get(id)
	return ok && ex != gone && !ex.Net.Inline && persists(ex) && string(ex.Properties.Username) == name
}

// heldBy (held.mu held) counts c's persistent sessions other than client
// id self's: the engine's sessions under c's name, and the live claims of
// c's connections not yet in the engine. It drops from the index the
// candidates that hold none.
func (a *Auth) heldBy(c *conn, self string) int {
	s := a.held.sets[c.id.Name]
	if s == nil {
		return 0
	}
	n := 0
	for id := range s.ids {
		if !a.stillHeld(c.id.Name, id, nil) {
			a.dropHeld(c.id.Name, s, id)
			continue
		}
		if id == self {
			continue
		}
		if ex, ok := a.srv.Clients.Get(id); ok && !ex.Net.Inline && persists(ex) && string(ex.Properties.Username) == c.id.Name {
			n++
		} else if v, ok := a.claims.Load(id); ok {
			if cm := v.(*claim); !cm.cl.Closed() && persists(cm.cl) && cm.c.sameOwner(c) {
				n++
			}
		}
	}
	return n
}

// overSessions (ownMu held) reports whether cl, connecting as c, would
// give c's identity a persistent session past the bound: it counts c's
// other persistent sessions (heldBy), for a viewer's or an operator's
// CONNECT that asks for a persistent session.
func (a *Auth) overSessions(cl *mqtt.Client, c *conn) bool {
	if a.maxSessions <= 0 || c.anonymous || c.id.Kind != devices.KindUser || c.id.Role == devices.RoleAdmin || !persists(cl) {
		return false
	}
	a.held.mu.Lock()
	n := a.heldBy(c, cl.ID)
	a.held.mu.Unlock()
	if n < a.maxSessions {
		return false
	}
	if a.sessionsLogged.Allow(c.id.Name, time.Now()) {
		a.log.Info("refused a persistent session past mqtt.max_sessions_per_user (first this minute for this user)",
			"client", cl.ID, "user", c.id.Name, "sessions", n, "limit", a.maxSessions)
	}
	return true
}
