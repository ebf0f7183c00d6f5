package devices

import (
	"time"

	"github.com/tether-iot/tether/internal/addrkey"
)

// BanShare carries what this node's Bans see to the other nodes of a
// cluster (cluster.Node.ShareBans): each refusal seen here, each ban
// decided here, each ban lifted here. Its methods are called on the
// refusing goroutine (the publish path too) and must not block.
type BanShare interface {
	Refused(Refusal)
	Banned(Ban)
	Lifted(Ban)
}

// liftedBan is a ban lifted before its end: another node's copy of it
// (Since not after since) is not taken up again.
type liftedBan struct{ since, until time.Time }

// BanState is a node's bans in force and the bans it lifted: what a node
// that joins, or comes back, takes from the others.
type BanState struct {
	Bans  []Ban  `json:"bans"`
	Lifts []Lift `json:"lifts,omitempty"`
}

// Lift names a lifted ban: its key and Since.
type Lift struct {
	Key   string    `json:"key"`
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
}

// Share makes b tell s what happens here from now on.
func (b *Bans) Share(s BanShare) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.share = s
}

// RefusedElsewhere counts a refusal another node saw, as if it had been
// seen here, without deciding a ban from it: the node that saw it
// decides, and sends the ban (Adopt). The throttle counts failed logins
// the same way (LoginLimiter.FailedElsewhere).
func (b *Bans) RefusedElsewhere(r Refusal) {
	if b == nil || (r.Kind != "login" && r.Kind != "acl") || !addrkey.Valid(r.Address) {
		return
	}
	b.refused(r, false)
}

// Adopt imposes a ban another node decided (its Since and Until, bounded
// by this node's ban duration), unless this node has one on that key
// already or lifted it since; it ends the key's connections here as a
// ban of its own would (OnBan), without auditing or counting it again
// (tether_banned counts it among the bans in force). It reports
// whether the ban was taken up. Its address is keyed here (addrkey.Of):
// an older node's ban of a full IPv6 address bans its /64.
func (b *Bans) Adopt(ban Ban) bool {
	if !b.Enabled() || !addrkey.Valid(ban.Address) {
		return false
	}
	ban.Address = addrkey.Of(ban.Address)
	switch ban.Kind {
	case "address":
		ban.Key, ban.Identity = AddressKey(ban.Address), ""
	case "identity":
		if ban.Identity == "" || len(ban.Identity) > maxAuditField {
			return false
		}
		ban.Key = IdentityKey(ban.Identity, ban.Address)
	default:
		return false
	}
	now := b.o.Now()
	if ban.Until.After(now.Add(b.o.Duration)) {
		ban.Until = now.Add(b.o.Duration)
	}
	if !ban.Until.After(now) {
		return false
	}
	if ban.Since.After(now) {
		ban.Since = now
	}
	b.mu.Lock()
	if b.bannedKey(ban.Key, now) {
		b.mu.Unlock()
		return false
	}
	if l, ok := b.lifted[ban.Key]; ok && !ban.Since.After(l.since) {
		b.mu.Unlock()
		return false
	}
	if len(b.active) >= banKeys {
		b.sweep(now.Add(time.Second))
	}
	b.active[ban.Key] = &ban // counted in tether_bans_total by its node only
	fns := b.onBan
	b.mu.Unlock()
	for _, f := range fns {
		go f(ban)
	}
	return true
}

// LiftElsewhere ends a ban another node lifted (the ban of key with
// that Since, or an older one), and remembers the lift.
func (b *Bans) LiftElsewhere(key string, since, until time.Time) {
	if b == nil {
		return
	}
	key = normalKey(key)
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if ban := b.active[key]; ban != nil && !ban.Since.After(since) {
		b.lift(ban)
		return
	}
	if l, ok := b.lifted[key]; (!ok || l.since.Before(since)) && until.After(now) && len(b.lifted) < banKeys {
		if end := now.Add(b.o.Duration); until.After(end) {
			until = end
		}
		b.lifted[key] = liftedBan{since: since, until: until}
	}
}

// State returns the bans in force and those lifted (BanState).
func (b *Bans) State() BanState {
	st := BanState{Bans: b.Active()}
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for key, l := range b.lifted {
		if l.until.After(now) {
			st.Lifts = append(st.Lifts, Lift{Key: key, Since: l.since, Until: l.until})
		}
	}
	return st
}

// Merge takes up another node's BanState: its lifts, then its bans.
func (b *Bans) Merge(st BanState) {
	for _, l := range st.Lifts {
		b.LiftElsewhere(l.Key, l.Since, l.Until)
	}
	for _, ban := range st.Bans {
		b.Adopt(ban)
	}
}
