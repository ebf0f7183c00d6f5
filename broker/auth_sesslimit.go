package broker

import (
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

// overSessions (ownMu held) reports whether cl, connecting as c, would
// give c's identity a persistent session past the bound: it counts c's
// other persistent sessions in the engine (each session's username is
// its identity's name, and user names are no device's id) and the claims
// of c's connections not yet in the engine. It reads every client the
// engine holds, but only for a viewer's or an operator's CONNECT that
// asks for a persistent session.
func (a *Auth) overSessions(cl *mqtt.Client, c *conn) bool {
	if a.maxSessions <= 0 || c.anonymous || c.id.Kind != devices.KindUser || c.id.Role == devices.RoleAdmin || !persists(cl) {
		return false
	}
	held := map[string]struct{}{}
	for id, ex := range a.srv.Clients.GetAll() {
		if id != cl.ID && !ex.Net.Inline && persists(ex) && string(ex.Properties.Username) == c.id.Name {
			held[id] = struct{}{}
		}
	}
	a.claims.Range(func(k, v any) bool {
		if cm := v.(*claim); k.(string) != cl.ID && !cm.cl.Closed() && persists(cm.cl) && cm.c.sameOwner(c) {
			held[k.(string)] = struct{}{}
		}
		return true
	})
	if len(held) < a.maxSessions {
		return false
	}
	if a.sessionsLogged.Allow(c.id.Name, time.Now()) {
		a.log.Info("refused a persistent session past mqtt.max_sessions_per_user (first this minute for this user)",
			"client", cl.ID, "user", c.id.Name, "sessions", len(held), "limit", a.maxSessions)
	}
	return true
}
