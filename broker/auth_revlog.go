package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// A revocation (the registry's OnRevoke: a password or role changed, a
// user deleted, a device disabled, deleted or given a new secret, a
// session logged out, a token revoked) disconnects the clients listed in
// clients that it matches. A CONNECT whose credentials were checked just
// before the change, but which is listed only after the revocation looked,
// would be missed and keep its connection under credentials that no
// longer hold. So the hook keeps the last revLogSize revocations,
// numbered: OnConnect notes the number before it checks the credentials
// (mark) and, once the connection is listed, looks at the revocations
// made since (missed). Either a revocation came before the listing, and
// the connection finds it there, or after, and the revocation finds the
// connection listed. A connection that finds one that matches it ends as
// a revoked connection does (cut); one that finds the log has moved on
// past its number (more than revLogSize revocations during its login)
// cannot tell, and ends too. Bans are state, not events: the connection
// asks again whether it is banned once listed (recheck).

// revLogSize is the number of revocations the log keeps.
const revLogSize = 1024

// revLog holds the last revLogSize revocations, numbered from 0.
type revLog struct {
	mu   sync.Mutex
	next uint64 // the next revocation's number: how many there were
	ring [revLogSize]devices.Revocation
}

// add logs rv.
func (l *revLog) add(rv devices.Revocation) {
	l.mu.Lock()
	l.ring[l.next%revLogSize] = rv
	l.next++
	l.mu.Unlock()
}

// mark returns the number the next revocation will have.
func (l *revLog) mark() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// missed reports whether one of the revocations numbered from on matches
// id (revoked), whether one that matches it purges its sessions (purge),
// and whether the log no longer holds them all (lost: then revoked too).
func (l *revLog) missed(from uint64, id devices.Identity) (revoked, purge, lost bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.next-from > revLogSize {
		return true, false, true
	}
	for n := from; n < l.next; n++ {
		if rv := &l.ring[n%revLogSize]; rv.Matches(id) {
			revoked = true
			purge = purge || rv.Purge
		}
	}
	return revoked, purge, false
}

// recheck ends cl, listed as c in clients after its credentials were
// checked with the revocation log at from, if a revocation made since
// matches it, if the log cannot tell (lost), or if it is banned now: what
// revoke and endBanned would have done had it been listed when they
// looked. It reports whether cl was ended.
func (a *Auth) recheck(cl *mqtt.Client, c *conn, from uint64) bool {
	if c.anonymous {
		return false
	}
	revoked, purge, lost := a.revs.missed(from, c.id)
	banned := !revoked && a.isBanned(cl, c.id.Name)
	if !revoked && !banned {
		return false
	}
	code := packets.ErrNotAuthorized
	switch {
	case banned:
		code = packets.ErrAdministrativeAction
		a.m.failures.WithLabelValues("banned", Transport(cl)).Inc()
	case lost:
		a.m.revoked.Inc()
		a.log.Warn("disconnecting a client: more revocations than the log holds came during its login", "client", cl.ID,
			"kind", c.id.Kind, "name", c.id.Name, "log", revLogSize)
	default:
		a.m.revoked.Inc()
	}
	if purge {
		a.markPurge(cl)
	}
	a.cut(target{cl, c}, code, func(target) {
		a.log.Info("disconnecting a client whose credentials were revoked or banned while it logged in", "client", cl.ID,
			"kind", c.id.Kind, "name", c.id.Name, "banned", banned)
	})
	return true
}
