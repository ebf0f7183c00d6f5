package devices

import (
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/addrkey"
)

// BanOptions shape Bans; see NewBans for the defaults of zero fields.
type BanOptions struct {
	// Threshold is how many refusals (failed logins, ACL denials) of one
	// key within Window ban it (security.ban_threshold, default 20). A
	// negative Threshold turns bans off (the configuration's 0).
	Threshold int
	// Window is the span the refusals are counted over (default 5m).
	Window time.Duration
	// Duration is how long a ban lasts (default 15m).
	Duration time.Duration
	// Exempt are addresses never banned as a whole (loopback by default
	// in the configuration; security.ban_exempt). An identity sinning
	// from one of them is still banned at it.
	Exempt []*net.IPNet
	// TrustedProxies are never banned as a whole either: their clients'
	// sins are the clients' (http.trusted_proxies).
	TrustedProxies []*net.IPNet
	// Audit receives each ban (Note: it never waits); nil records none.
	Audit *Audit
	// Node is this node's name in a cluster (cluster.node), given to
	// the refusals it sees and the bans it decides; "" alone.
	Node string
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// Refusal is one thing a client was refused: a failed login or an ACL
// denial.
type Refusal struct {
	Time time.Time `json:"time"`
	// Kind is "login" or "acl".
	Kind string `json:"kind"`
	// Address is the client's address (after trusted proxies).
	Address string `json:"address"`
	// Identity is the user name or device id: the one tried (login) or
	// the one connected (acl); empty when unknown.
	Identity string `json:"identity"`
	// Detail says what was refused ("publish $SYS/x"), never a secret or
	// a payload.
	Detail string `json:"detail"`
	// Node is the cluster node that refused it; omitted alone.
	Node string `json:"node,omitempty"`
}

// Ban is a key refused for a while: a whole address, or one identity at
// one address. An address is its addrkey.Of: an IPv6 address's ban
// covers its /64 ("ip:2001:db8:1:2::/64"), which its client owns whole.
type Ban struct {
	// Key names the ban: "ip:ADDRESS" or "id:IDENTITY@ADDRESS", ADDRESS
	// an addrkey.Of.
	Key string `json:"key"`
	// Kind is "address" or "identity".
	Kind     string    `json:"kind"`
	Address  string    `json:"address"`
	Identity string    `json:"identity,omitempty"`
	Refusals int       `json:"refusals"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	// Node is the cluster node that decided it; omitted alone.
	Node string `json:"node,omitempty"`
}

// Offender is a key's refusals: within the window, and in all.
type Offender struct {
	Key      string    `json:"key"`
	Kind     string    `json:"kind"`
	Address  string    `json:"address"`
	Identity string    `json:"identity,omitempty"`
	Recent   int       `json:"recent"`
	Total    int       `json:"total"`
	Last     time.Time `json:"last"`
	Banned   bool      `json:"banned"`
}

// Limits of the memory Bans hold.
const (
	banKeys        = 50_000
	recentRefusals = 200
)

// Bans is intrusion detection (SPEC §5): it counts the refusals of each
// address and of each identity at an address, and bans a key that has
// Threshold of them within Window, for Duration. The refusals come from
// the login limiter's failures (LoginLimiter.OnFailure: one count of
// failed logins, MQTT and HTTP alike) and from the broker's ACL
// denials (Denied).
//
// Failed logins count for the address and for the name tried at it; an
// authenticated identity's ACL denials count for that identity at its
// address only (an anonymous client's for its address). An address ban
// refuses every connection and login from the address; an identity ban
// refuses that identity's logins from that address only, so no ban ever
// keeps a correct login from another address out. Exempt
// addresses and trusted proxies are never banned as a whole (a proxy's
// clients are judged by their own address when it is known).
//
// It is safe for concurrent use and cheap enough for the publish path;
// its memory is bounded. Bans live in memory: a restart lifts them.
type Bans struct {
	o BanOptions

	// bans counts bans imposed, by kind; banned reads the bans in force
	// when scraped (metrics.go).
	bans   *prometheus.CounterVec
	banned prometheus.GaugeFunc

	// mu guards the fields below.
	mu      sync.Mutex
	keys    map[string]*banKey
	active  map[string]*Ban
	recent  []Refusal // ring of the latest refusals
	next    int
	onBan   []func(Ban)
	expired time.Time // last sweep of ended bans
	// share carries this node's refusals, bans and lifts to the other
	// nodes (bans_shared.go); nil alone. lifted remembers the bans
	// lifted, key → the lifted ban's Since, until they would have
	// ended, so that another node's copy does not bring one back.
	share  BanShare
	lifted map[string]liftedBan
}

type banKey struct {
	times []time.Time // refusals within the window, oldest first
	total int
	last  time.Time
}

// NewBans returns the ban list; o may be nil (defaults, bans on).
func NewBans(o *BanOptions) *Bans {
	var opts BanOptions
	if o != nil {
		opts = *o
	}
	if opts.Threshold == 0 {
		opts.Threshold = 20
	}
	if opts.Window <= 0 {
		opts.Window = 5 * time.Minute
	}
	if opts.Duration <= 0 {
		opts.Duration = 15 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := &Bans{
		o:      opts,
		keys:   map[string]*banKey{},
		active: map[string]*Ban{},
		lifted: map[string]liftedBan{},
		bans: counterVec(prometheus.CounterOpts{Name: "tether_bans_total",
			Help: "Bans imposed for repeated refused logins or ACL denials, by kind (address, identity)."}, "kind", "address", "identity"),
	}
	b.banned = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_banned", Help: "Bans in force now."}, b.inForce)
	return b
}

// Options returns the options, defaults filled in.
func (b *Bans) Options() BanOptions { return b.o }

// Enabled reports whether refusals lead to bans.
func (b *Bans) Enabled() bool { return b != nil && b.o.Threshold > 0 }

// OnBan calls f (on its own goroutine) with each new ban: the broker ends
// the banned key's connections.
func (b *Bans) OnBan(f func(Ban)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onBan = append(b.onBan, f)
}

// AddressKey and IdentityKey name a ban's keys; addr may be an address
// or its key (addrkey.Of).
func AddressKey(addr string) string            { return "ip:" + addrkey.Of(addr) }
func IdentityKey(identity, addr string) string { return "id:" + identity + "@" + addrkey.Of(addr) }

// normalKey is key with its address keyed by addrkey.Of: the key of the
// same ban, as written by an older node (a full IPv6 address) or typed
// by an admin.
func normalKey(key string) string {
	kind, addr, identity := splitBanKey(key)
	if !addrkey.Valid(addr) {
		return key
	}
	if kind == "address" {
		return AddressKey(addr)
	}
	return IdentityKey(identity, addr)
}

// LoginFailed records a failed login as name from addr (hand it to
// LoginLimiter.OnFailure).
func (b *Bans) LoginFailed(name, addr string) {
	b.Refused(Refusal{Kind: "login", Address: addr, Identity: name, Detail: "wrong credentials"})
}

// Refused records r and bans its keys that reach the threshold.
func (b *Bans) Refused(r Refusal) {
	if b == nil {
		return
	}
	r.Node = b.o.Node
	b.refused(r, true)
}

// refused records r; a refusal seen here (local) bans the keys it brings
// to the threshold and is shared with the other nodes, one seen
// elsewhere (bans_shared.go) is only counted: its node decides.
func (b *Bans) refused(r Refusal, local bool) {
	if r.Address == "" {
		return
	}
	if len(r.Identity) > maxAuditField {
		r.Identity = r.Identity[:maxAuditField]
	}
	if len(r.Detail) > maxAuditField {
		r.Detail = r.Detail[:maxAuditField]
	}
	now := b.o.Now()
	r.Time = now
	var fresh []Ban
	b.mu.Lock()
	if len(b.recent) < recentRefusals {
		b.recent = append(b.recent, r)
	} else {
		b.recent[b.next] = r
	}
	b.next = (b.next + 1) % recentRefusals
	if len(b.keys) >= banKeys {
		b.prune(now)
	}
	// An identity's ACL denials are its own: they ban it at its address,
	// not the address's other clients (a site behind one NAT). The keys
	// hold the address's key: an IPv6 client's /64.
	key := addrkey.Of(r.Address)
	if !b.exempt(r.Address) && (r.Kind != "acl" || r.Identity == "") {
		if ban := b.count(AddressKey(key), "address", key, "", now, local); ban != nil {
			fresh = append(fresh, *ban)
		}
	}
	if r.Identity != "" {
		if ban := b.count(IdentityKey(r.Identity, key), "identity", key, r.Identity, now, local); ban != nil {
			fresh = append(fresh, *ban)
		}
	}
	fns, share := b.onBan, b.share
	b.mu.Unlock()
	if local && share != nil {
		share.Refused(r)
	}
	for _, ban := range fresh {
		if share != nil {
			share.Banned(ban)
		}
		b.o.Audit.Note(AuditEntry{Action: AuditBanned, Actor: ban.Identity, Via: "security", Target: ban.Key,
			Remote: ban.Address, Detail: strconv.Itoa(ban.Refusals) + " refusals within " + b.o.Window.String() +
				"; until " + ban.Until.UTC().Format(time.RFC3339)})
		for _, f := range fns {
			go f(ban)
		}
	}
}

// count adds a refusal to key and returns the ban it starts, if any
// (only when decide). mu must be held.
func (b *Bans) count(key, kind, addr, identity string, now time.Time, decide bool) *Ban {
	k := b.keys[key]
	if k == nil {
		k = &banKey{}
		b.keys[key] = k
	}
	k.total++
	k.last = now
	cut := now.Add(-b.o.Window)
	i := 0
	for i < len(k.times) && !k.times[i].After(cut) {
		i++
	}
	k.times = append(k.times[i:], now)
	keep := b.o.Threshold
	if keep <= 0 {
		keep = recentRefusals // bans off: count a bounded few for Offenders
	}
	if len(k.times) > keep {
		k.times = k.times[len(k.times)-keep:]
	}
	if !decide || !b.Enabled() || len(k.times) < b.o.Threshold || b.bannedKey(key, now) {
		return nil
	}
	ban := &Ban{Key: key, Kind: kind, Address: addr, Identity: identity, Refusals: len(k.times),
		Since: now, Until: now.Add(b.o.Duration), Node: b.o.Node}
	b.active[key] = ban
	b.bans.WithLabelValues(kind).Inc()
	return ban
}

func (b *Bans) bannedKey(key string, now time.Time) bool {
	ban := b.active[key]
	return ban != nil && ban.Until.After(now)
}

// exempt reports whether addr may never be banned as a whole: its key
// (an IPv6 address's /64) holds an exempt address or a trusted proxy.
func (b *Bans) exempt(addr string) bool {
	p, ok := addrkey.Prefix(addr)
	if !ok {
		return false
	}
	for _, nets := range [2][]*net.IPNet{b.o.Exempt, b.o.TrustedProxies} {
		for _, n := range nets {
			first, ok := netip.AddrFromSlice(n.IP)
			if n.Contains(p.Addr().AsSlice()) || ok && p.Contains(first.Unmap()) {
				return true
			}
		}
	}
	return false
}

// AddressBanned reports whether every connection from addr (an address,
// or its key) is refused.
func (b *Bans) AddressBanned(addr string) bool {
	if !b.Enabled() {
		return false
	}
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bannedKey(AddressKey(addr), now)
}

// Banned returns the ban that refuses a login as identity from addr: its
// address's, or the identity's at that address.
func (b *Bans) Banned(identity, addr string) (Ban, bool) {
	if !b.Enabled() {
		return Ban{}, false
	}
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, key := range [2]string{AddressKey(addr), IdentityKey(identity, addr)} {
		if b.bannedKey(key, now) {
			return *b.active[key], true
		}
	}
	return Ban{}, false
}

// Lift ends the ban key (and forgets its refusals); false when there is
// no such ban in force. An IPv6 address in key may be given in full: the
// ban of its /64 is lifted.
func (b *Bans) Lift(key string) (Ban, bool) {
	key = normalKey(key)
	now := b.o.Now()
	b.mu.Lock()
	ban, ok := b.active[key]
	if !ok || !ban.Until.After(now) {
		b.mu.Unlock()
		return Ban{}, false
	}
	b.lift(ban)
	share := b.share
	b.mu.Unlock()
	if share != nil {
		share.Lifted(*ban)
	}
	return *ban, true
}

// lift ends ban, forgets its key's refusals and remembers the lift. mu
// must be held.
func (b *Bans) lift(ban *Ban) {
	delete(b.active, ban.Key)
	if k := b.keys[ban.Key]; k != nil {
		k.times = k.times[:0]
	}
	b.lifted[ban.Key] = liftedBan{since: ban.Since, until: ban.Until}
}

// Active returns the bans in force, latest first.
func (b *Bans) Active() []Ban {
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweep(now)
	out := make([]Ban, 0, len(b.active))
	for _, ban := range b.active {
		out = append(out, *ban)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.After(out[j].Since)
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// Recent returns the latest refusals (up to 200), newest first.
func (b *Bans) Recent() []Refusal {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Refusal, 0, len(b.recent))
	for i := 1; i <= len(b.recent); i++ {
		out = append(out, b.recent[(b.next-i+len(b.recent))%len(b.recent)])
	}
	return out
}

// Offenders returns up to n keys with the most refusals within the
// window (then in all), most first.
func (b *Bans) Offenders(n int) []Offender {
	now := b.o.Now()
	cut := now.Add(-b.o.Window)
	b.mu.Lock()
	out := make([]Offender, 0, len(b.keys))
	for key, k := range b.keys {
		o := Offender{Key: key, Total: k.total, Last: k.last, Banned: b.bannedKey(key, now)}
		for _, t := range k.times {
			if t.After(cut) {
				o.Recent++
			}
		}
		o.Kind, o.Address, o.Identity = splitBanKey(key)
		out = append(out, o)
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, c := out[i], out[j]
		switch {
		case a.Recent != c.Recent:
			return a.Recent > c.Recent
		case a.Total != c.Total:
			return a.Total > c.Total
		}
		return a.Key < c.Key
	})
	return out[:min(n, len(out))]
}

// splitBanKey is the reverse of AddressKey and IdentityKey.
func splitBanKey(key string) (kind, addr, identity string) {
	if len(key) > 3 && key[:3] == "ip:" {
		return "address", key[3:], ""
	}
	rest := key[min(3, len(key)):]
	for i := len(rest) - 1; i >= 0; i-- {
		if rest[i] == '@' {
			return "identity", rest[i+1:], rest[:i]
		}
	}
	return "identity", "", rest
}

// sweep drops ended bans, at most once a second. mu must be held.
func (b *Bans) sweep(now time.Time) {
	if now.Sub(b.expired) < time.Second {
		return
	}
	b.expired = now
	for key, ban := range b.active {
		if !ban.Until.After(now) {
			delete(b.active, key)
		}
	}
	for key, l := range b.lifted {
		if !l.until.After(now) {
			delete(b.lifted, key)
		}
	}
}

// prune drops keys with no refusal within the window and no ban, and if
// that is not enough, the older half. mu must be held.
func (b *Bans) prune(now time.Time) {
	b.sweep(now.Add(time.Second))
	cut := now.Add(-b.o.Window)
	for key, k := range b.keys {
		if k.last.Before(cut) && b.active[key] == nil {
			delete(b.keys, key)
		}
	}
	if len(b.keys) < banKeys*3/4 {
		return
	}
	mid := now.Add(-b.o.Window / 2)
	for key, k := range b.keys {
		if (k.last.Before(mid) || len(b.keys) >= banKeys/2) && b.active[key] == nil {
			delete(b.keys, key)
		}
	}
}

// Describe implements prometheus.Collector.
func (b *Bans) Describe(ch chan<- *prometheus.Desc) { b.bans.Describe(ch); b.banned.Describe(ch) }

// Collect implements prometheus.Collector.
func (b *Bans) Collect(ch chan<- prometheus.Metric) { b.bans.Collect(ch); b.banned.Collect(ch) }

// inForce is how many bans are in force now.
func (b *Bans) inForce() float64 {
	now := b.o.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweep(now)
	n := 0
	for _, ban := range b.active {
		if ban.Until.After(now) {
			n++
		}
	}
	return float64(n)
}
