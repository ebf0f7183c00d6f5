package broker

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/addrkey"
	"github.com/tether-iot/tether/internal/logevery"
)

// AuthOptions configure the access hook. Zero durations mean the defaults.
type AuthOptions struct {
	// Registry authenticates devices and users. Required.
	Registry *devices.Registry
	// AllowAnonymous lets clients without credentials in, with full
	// access (auth.allow_anonymous). Clients that do send credentials
	// are still checked.
	AllowAnonymous bool
	// Logger receives the hook's log; nil means slog.Default().
	Logger *slog.Logger
	// Logins is the login throttle, shared with the HTTP API (SPEC §5:
	// one limiter); nil means one of the hook's own (auth_limit.go).
	Logins *devices.LoginLimiter
	// LoginHold is the longest a CONNECT is held while the limiter keeps
	// its login closed (default 5s; auth_limit.go).
	LoginHold time.Duration
	// Rules are auth.rules (SPEC §5), checked before the built-in rules;
	// SetRules replaces them.
	Rules []rules.Rule
	// Bans is intrusion detection: a banned identity or address is
	// refused at CONNECT (0x8A; 3.1.1: 0x05), its live connections end
	// when the ban starts, and ACL denials count towards bans
	// (auth_ban.go). Nil bans nobody.
	Bans *devices.Bans
	// Sessions is the session store, from which the sessions of a deleted
	// or disabled device and of a deleted user are purged (with the
	// engine's copy of them). Nil purges the engine's copy only.
	Sessions SessionPurger
}

// Auth is the access hook (Options.Access): it authenticates every CONNECT
// against the device registry, holds the connected identity of each client
// in memory, decides every publish, subscribe and delivery from it (SPEC
// §5; see auth_acl.go), publishes devices' presence, and disconnects a device
// or user the registry revokes.
//
// It is also a prometheus.Collector for its counters.
type Auth struct {
	mqtt.HookBase

	reg   *devices.Registry
	anon  bool
	log   *slog.Logger
	srv   *mqtt.Server
	login *devices.LoginLimiter
	hold  time.Duration
	bans  *devices.Bans
	m     *authMetrics

	// clients maps each connected *mqtt.Client to its *conn.
	clients sync.Map
	// ending holds the clients between this hook's OnDisconnect and the
	// tail's (the last hook's): the session store's OnDisconnect, between
	// them, still reads the client, so a purge must wait for the tail
	// (purgeSessionsOf). tailed says the tail is installed.
	ending sync.Map
	// purgeOnEnd holds the clients whose session is to be purged when
	// their connection has ended (their identity deleted or disabled
	// while they were connected or ending, or the session deleted by an
	// admin: DeleteSession): purgeTail purges them
	// whatever the registry says by then; each one's value is a channel
	// closed once it has been (DeleteSession waits for it). endMu orders
	// the tail's decision with purgeSessionsOf's marks (auth_purge.go).
	purgeOnEnd sync.Map
	endMu      sync.Mutex
	// established holds the clients whose CONNACK has gone
	// (OnSessionEstablished until OnDisconnect): only those may be sent
	// a DISCONNECT (end).
	established sync.Map
	tailed      atomic.Bool
	// current maps a device id to the *mqtt.Client that last
	// authenticated as it, so that a connection taken over by a newer one
	// does not mark the device offline.
	current sync.Map
	// sessions maps the client id of a disconnected persistent session to
	// the *conn it last connected with: messages queued for an offline
	// session are ACL-checked against that identity (SPEC §7, §9).
	sessions sync.Map
	// claims maps a client id to the *claim of a connection that passed
	// OnConnect and is not yet in the engine's client list, so that two
	// identities connecting at once with one client id cannot both pass
	// the ownership check (auth_owner.go). ownMu makes check and claim one
	// step.
	claims sync.Map
	ownMu  sync.Mutex
	// subscribing maps a client whose SUBSCRIBE is being answered to its
	// *pendingSubscribe, so that only refused subscriptions, not refused
	// deliveries, count towards bans (auth_ban.go) and are held to
	// maxSubs (auth_subs.go); nSubscribing counts its entries.
	subscribing  sync.Map
	nSubscribing atomic.Int64
	// maxSubs is mqtt.max_subscriptions_per_client (0: none); subsLogged
	// throttles the log of its refusals.
	maxSubs    int
	subsLogged *logevery.Keys
	// maxLevels is mqtt.max_subscription_levels_per_client (0: none) and
	// topicLevels mqtt.max_topic_levels; subLevels maps a connected
	// *mqtt.Client to the *subLevels count of its session's filters,
	// once it has many (auth_sublevels.go); levelSeed seeds the hashes.
	maxLevels   int
	topicLevels int
	subLevels   sync.Map
	// restoredOver holds the ids of the sessions restored over
	// maxLevels (checkRestored); nRestoredOver counts them.
	restoredOver  sync.Map
	nRestoredOver atomic.Int64
	levelSeed     maphash.Seed
	// maxSessions is mqtt.max_sessions_per_user (0: none;
	// auth_sesslimit.go); sessionsLogged throttles the log of its
	// refusals.
	maxSessions    int
	sessionsLogged *logevery.Keys
	// held indexes the persistent sessions by name, for
	// maxSessions (auth_sesslimit.go).
	held heldIndex
	// purger deletes purged sessions from the session store.
	purger SessionPurger
	// retained is the retained index (the broker's RetainedLimit hook,
	// if it has one): a deleted device's retained messages outside
	// devices/{id}/ are found there.
	retained *RetainedLimit
	// wills are the engine's wills waiting out their delay, nil if it
	// cannot be reached (auth_will.go).
	wills *packets.Packets
	// willFrom maps a client id to the connection whose will, delayed,
	// the engine queued last under it (delayWill): cancelWill removes a
	// waiting will only if it is the connection's it cancels for.
	willFrom sync.Map
	// moved holds the clients whose session moved to another node
	// (YieldSession) while their connection here had yet to end: the
	// will it leaves is cancelled as it does (OnDisconnect).
	moved sync.Map
	// read mends the packets clients send (gate.read); nil until
	// broker.New sets it.
	read func(*mqtt.Client, packets.Packet) packets.Packet
	// rules are the compiled auth.rules (nil: none).
	rules atomic.Pointer[Rules]
	// started: the engine has loaded the stored sessions.
	started atomic.Bool
	// elsewhere asks the other nodes of a cluster for a client id
	// (auth_cluster.go); nil when alone.
	elsewhere atomic.Pointer[func(clientID string, o SessionOwner) bool]
	// expiry ends connections whose credentials expire (auth_expiry.go).
	expiry expiries
	// revs are the last revocations, for the connections that were
	// logging in as they were made (auth_revlog.go).
	revs revLog
	// checked, when not nil, is called by OnConnect between the
	// credentials' check and the listing of the connection: tests make
	// their changes there.
	checked atomic.Pointer[func(cl *mqtt.Client)]

	// stopMu guards stopped and wg.Add, so that no revocation starts
	// once Stop waits.
	stopMu  sync.Mutex
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup // revocation goroutines
	// stopCtx ends with stop, for the login limiter's waits.
	stopCtx  context.Context
	stopWait context.CancelFunc
}

// conn is what the hook knows of one connected client.
type conn struct {
	id        devices.Identity
	anonymous bool
	// revoked: being disconnected; may do nothing more.
	revoked bool
	// clientID is the client id it connected with (%c in auth rules).
	clientID string
	// acl is its compiled access (auth_rules.go); nil allows only what
	// the fixed rules of auth_acl.go allow everyone of its kind.
	acl *aclBox
}

// NewAuth returns the access hook; pass it as Options.Access. The broker
// binds it to its engine in New.
func NewAuth(opts AuthOptions) *Auth {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Auth{
		reg:   opts.Registry,
		anon:  opts.AllowAnonymous,
		log:   log.With("component", "auth"),
		login: opts.Logins,
		hold:  opts.LoginHold,
		bans:  opts.Bans,
		m:     newAuthMetrics(),
		stop:  make(chan struct{}),

		subsLogged: logevery.New(subsLogEvery),
		levelSeed:  maphash.MakeSeed(),
	}
	a.stopCtx, a.stopWait = context.WithCancel(context.Background())
	a.purger = opts.Sessions
	if a.login == nil {
		a.login = devices.NewLoginLimiter(nil)
	}
	if a.hold <= 0 {
		a.hold = defaultLoginHold
	}
	rs, err := CompileRules(opts.Rules)
	if err != nil {
		// Checked at start-up (the configuration's validation); a caller that
		// skipped that gets no rules rather than half of them.
		a.log.Error("auth rules ignored", "error", err)
		rs = nil
	}
	a.rules.Store(rs)
	a.reg.OnRevoke(a.revoke)
	a.reg.OnDeviceChange(a.deviceChanged)
	if a.bans != nil {
		a.bans.OnBan(a.endBanned)
	}
	return a
}

// bind gives the hook the engine it serves; broker.New calls it.
func (a *Auth) bind(srv *mqtt.Server) {
	a.srv = srv
	a.wills = delayedWills(srv)
}

// indexRetained gives the hook the broker's retained index; broker.New
// calls it.
func (a *Auth) indexRetained(l *RetainedLimit) { a.retained = l }

// readFirst has the hook's OnPacketRead mend the packets clients send
// with read (the broker's gate: gate.read) before anything else;
// broker.New calls it.
func (a *Auth) readFirst(read func(*mqtt.Client, packets.Packet) packets.Packet) { a.read = read }

// ID implements mqtt.Hook.
func (a *Auth) ID() string { return "tether-auth" }

// Provides implements mqtt.Hook.
func (a *Auth) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnStarted,
		mqtt.OnClientExpired, mqtt.OnPacketRead:
		return true
	case mqtt.OnSubscribed:
		return a.notesSubscribes()
	case mqtt.OnUnsubscribed:
		return a.maxLevels > 0
	}
	return false
}

// Stop implements mqtt.Hook: it ends pending login holds and waits for
// revocations in progress. The engine calls it from Server.Close.
func (a *Auth) Stop() error {
	a.stopMu.Lock()
	if !a.stopped {
		a.stopped = true
		close(a.stop)
		a.stopWait()
	}
	a.stopMu.Unlock()
	a.stopExpiry()
	a.wg.Wait()
	return nil
}

// working counts a piece of work that Stop waits for (a.wg), unless the
// hook has stopped: false, and then the caller does nothing. The caller
// calls a.wg.Done when done.
func (a *Auth) working() bool {
	a.stopMu.Lock()
	defer a.stopMu.Unlock()
	if a.stopped {
		return false
	}
	a.wg.Add(1)
	return true
}

// OnConnect authenticates the client, or refuses it with the CONNACK code
// that says why [MQTT-3.2.2-6]: 0x86 bad username or password (3.1.1:
// 0x05) for wrong, unknown or disabled credentials, 0x87 not authorized
// (3.1.1: 0x05) without credentials or with a will the identity may not
// publish (auth_will.go), 0x85 client identifier not valid (3.1.1: 0x02)
// when a device's client id is not its id, when someone else takes a
// device's client id, or when the client id's session belongs to another
// identity (auth_owner.go). It runs on the connecting client's own
// goroutine: its bcrypt (people's passwords) and its login hold hold up
// nobody else.
func (a *Auth) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
	transport := Transport(cl)
	if a.isBanned(cl, user) {
		return a.refuse(cl, user, packets.ErrBanned, "banned")
	}
	var c *conn
	var from uint64
	if pass == "" {
		// No credentials (a name alone is none): anonymous, if allowed.
		if !a.anon {
			return a.refuse(cl, "", packets.ErrNotAuthorized, "no_credentials")
		}
		c = a.newConn(devices.Identity{}, true, cl.ID)
		if a.reg.HasDevice(cl.ID) {
			// An anonymous client must not take a device's client id
			// (its session, its command responses).
			return a.deny(cl, packets.ErrClientIdentifierNotValid, "client_id")
		}
	} else {
		ok, end := a.holdLogin(cl, user)
		if !ok {
			return a.refuse(cl, user, packets.ErrConnectionRateExceeded, "throttled")
		}
		defer end() // once Failed or Succeeded has recorded the attempt
		// Before the check: recheck reads the revocations made since.
		from = a.revs.mark()
		id, err := a.reg.Authenticate(context.Background(), user, pass)
		if err != nil {
			if !errors.Is(err, devices.ErrUnauthorized) {
				a.log.Error("authenticate", "client", cl.ID, "username", user, "error", err)
			}
			return a.refuse(cl, user, packets.ErrBadUsernameOrPassword, "bad_credentials")
		}
		if id.Kind == devices.KindDevice && cl.ID != id.Name {
			// A device's client id is its id (SPEC §5).
			return a.refuse(cl, user, packets.ErrClientIdentifierNotValid, "client_id")
		}
		if f := a.checked.Load(); f != nil {
			(*f)(cl)
		}
		c = a.newConn(id, false, cl.ID)
		if id.Kind != devices.KindDevice && a.reg.HasDevice(cl.ID) {
			// A person must not take over a device's session.
			return a.refuse(cl, user, packets.ErrClientIdentifierNotValid, "client_id")
		}
	}
	if pk.Connect.WillFlag && !c.mayWill(pk.Connect.WillTopic) {
		a.m.wills.WithLabelValues("connect").Inc()
		return a.deny(cl, packets.ErrNotAuthorized, "will")
	}
	a.evictSquatter(cl, c)
	a.awaitPurge(cl.ID)
	if code := a.claim(cl, c); code == packets.ErrQuotaExceeded {
		return a.deny(cl, code, "session_limit")
	} else if code != packets.CodeSuccess || !a.claimElsewhere(cl, c) {
		return a.deny(cl, packets.ErrClientIdentifierNotValid, "session_owner")
	}
	// The session records its owner by name (stored with it, read back
	// after a restart: auth_owner.go): the identity's name, never what an
	// anonymous client or a token login put in the username field.
	if c.anonymous {
		cl.Properties.Username = nil
		a.clients.Store(cl, c)
		a.fresh(c) // rules reloaded meanwhile
		a.m.logins.WithLabelValues("anonymous", transport).Inc()
		return nil
	}
	cl.Properties.Username = []byte(c.id.Name)
	a.login.Succeeded(user, addrkey.Host(cl.Net.Remote))
	a.clients.Store(cl, c)
	a.watchExpiry(cl, c)
	if c.id.Kind == devices.KindDevice {
		a.current.Store(c.id.Name, cl)
		// Grants or type changed meanwhile: deviceChanged may have
		// missed this connection.
		a.rebuild(c)
	} else {
		a.fresh(c)
	}
	if a.recheck(cl, c, from) {
		// Revoked or banned while it logged in: it ends as the
		// connections listed then did (before its CONNACK: cut off).
		return nil
	}
	a.m.logins.WithLabelValues(c.id.Kind, transport).Inc()
	a.log.Debug("client authenticated", "client", cl.ID, "kind", c.id.Kind, "name", c.id.Name, "via", c.id.Via, "transport", transport, "remote", cl.Net.Remote)
	return nil
}

// refuse counts a failed login (in the login limiter too, see
// auth_limit.go) and sends the refusal CONNACK.
func (a *Auth) refuse(cl *mqtt.Client, user string, code packets.Code, reason string) error {
	a.m.failures.WithLabelValues(reason, Transport(cl)).Inc()
	a.failed(cl, user, reason)
	a.reg.LoginRefused(user, addrkey.Host(cl.Net.Remote), "mqtt/"+Transport(cl), reason) // the audit log, if any
	a.log.Debug("login refused", "client", cl.ID, "username", user, "remote", cl.Net.Remote, "reason", reason)
	return Refuse(a.srv, cl, code)
}

// OnConnectAuthenticate lets in the clients OnConnect accepted.
func (a *Auth) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := a.clients.Load(cl)
	return ok
}

// OnSessionEstablished publishes a device's presence once its CONNACK is
// sent.
func (a *Auth) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	a.established.Store(cl, struct{}{})
	a.unclaim(cl) // the engine lists it now
	if c := a.conn(cl); c != nil && c.id.Kind == devices.KindDevice {
		a.online(cl, c.id.Name)
	}
}

// OnDisconnect forgets the client and records a device offline unless a
// newer connection has taken its session over.
func (a *Auth) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if a.tailed.Load() {
		a.ending.Store(cl, struct{}{}) // before it leaves clients: always in one of them
	}
	a.unclaim(cl)
	if !cl.Net.Inline {
		if expire {
			a.unheld(cl) // the engine drops the session
		} else {
			if name := string(cl.Properties.Username); !a.reg.HasDevice(name) {
				a.holdSession(name, cl.ID) // a session restored at start-up comes here first
			}
		}
	}
	a.forgetSubscribe(cl)
	a.forgetLevels(cl)
	a.established.Delete(cl)
	a.forgetExpiry(cl)
	// A connection taken over, here (the engine marks it before the new
	// connection's CONNACK) or on another node (movedAway), leaves no
	// will [MQTT-3.1.3-9]: the engine has taken it by now, maybe after
	// the CONNACK cancelled the wills waiting. Marked after this reads
	// it, the will was taken before the CONNACK, which cancels it.
	if _, ok := a.moved.LoadAndDelete(cl); ok || cl.IsTakenOver() {
		a.cancelWill(cl)
	}
	v, ok := a.clients.LoadAndDelete(cl)
	if !ok {
		return
	}
	c := v.(*conn)
	if !expire && !c.revoked {
		// The session outlives the connection: remember who owns it.
		a.sessions.Store(cl.ID, c)
	} else {
		a.sessions.CompareAndDelete(cl.ID, c)
	}
	if c.id.Kind == devices.KindDevice {
		a.offline(cl, c.id.Name)
	}
}

// OnClientExpired forgets an expired session's identity.
func (a *Auth) OnClientExpired(cl *mqtt.Client) {
	a.unheld(cl)
	a.sessions.Delete(cl.ID)
	a.willFrom.Delete(cl.ID)
}

// sessionConn returns the identity that governs deliveries into the
// offline session of cl: the one it last connected with, or for a session
// restored from storage after a restart, its recorded owner
// (restoredOwner). Nil (nothing delivered until the owner reconnects) when
// the owner is unknown.
func (a *Auth) sessionConn(cl *mqtt.Client) *conn {
	if v, ok := a.sessions.Load(cl.ID); ok {
		return v.(*conn)
	}
	c := a.restoredOwner(cl)
	if c != nil {
		a.sessions.LoadOrStore(cl.ID, c)
	}
	return c
}

func (a *Auth) conn(cl *mqtt.Client) *conn {
	v, ok := a.clients.Load(cl)
	if !ok {
		return nil
	}
	return v.(*conn)
}

// revoke disconnects every client that rv matches (a device disabled,
// deleted or rotated; a user deleted; a session logged out; a token
// revoked) and, when rv.Purge (the identity is gone or disabled), purges
// its sessions (auth_purge.go). Registry.OnRevoke calls it after the
// change is committed; it does not block the caller.
func (a *Auth) revoke(rv devices.Revocation) {
	a.revs.add(rv) // before clients is read: see auth_revlog.go
	a.stopMu.Lock()
	defer a.stopMu.Unlock()
	if a.stopped {
		return
	}
	if rv.Purge {
		// Before the change's caller (an API request) returns: the
		// offline sessions go now, the others as their connections end,
		// so that whoever connects after it starts clean, however soon
		// (the device enabled again at once).
		a.purgeSessionsOf(rv.Name)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		matched := false
		defer func() {
			// A deleted device that was not connected: its retained
			// status goes now (a connected one's goes as it disconnects).
			if !matched && rv.SessionID == "" && rv.TokenID == "" && !a.reg.HasDevice(rv.Name) {
				a.clearRetained(rv.Name)
			}
		}()
		a.sessions.Range(func(k, v any) bool {
			if c := v.(*conn); !c.anonymous && rv.Matches(c.id) {
				a.sessions.Delete(k)
			}
			return true
		})
		var ts []target
		a.clients.Range(func(k, v any) bool {
			cl, c := k.(*mqtt.Client), v.(*conn)
			if rv.Purge && !c.anonymous && rv.Matches(c.id) {
				a.markPurge(cl) // one that authenticated as the change was made
			}
			if c.anonymous || c.revoked || !rv.Matches(c.id) {
				return true
			}
			matched = true
			ts = append(ts, target{cl, c})
			return true
		})
		a.cutAll(ts, packets.ErrNotAuthorized, func(t target) {
			a.m.revoked.Inc()
			a.log.Info("disconnecting revoked client", "client", t.cl.ID, "kind", t.c.id.Kind, "name", t.c.id.Name)
		})
		if rv.Purge {
			// After the disconnections: a session whose connection
			// ended meanwhile is offline by now. (A connection still
			// ending is purged once it has: purgeTail.)
			a.purgeSessionsOf(rv.Name)
		}
	}()
}

// Identity returns who cl connected as; ok is false for a client the hook
// does not know (or an anonymous one, when allowed). For GET /clients.
func (a *Auth) Identity(cl *mqtt.Client) (id devices.Identity, ok bool) {
	c := a.conn(cl)
	if c == nil || c.anonymous {
		return devices.Identity{}, false
	}
	return c.id, true
}

// cutParallel bounds the connections cutAll ends at once.
const cutParallel = 32

// target is a connection to cut: cl, made as c.
type target struct {
	cl *mqtt.Client
	c  *conn
}

// cutAll cuts each of ts for code (a revocation, a ban, an expired
// credential), up to cutParallel at a time, then returns. Each
// DISCONNECT's write is bounded by a second (end): in a row, N clients
// that read nothing would hold up the last by N seconds; at once, about
// one (up to cutParallel of them).
func (a *Auth) cutAll(ts []target, code packets.Code, ended func(target)) {
	sem := make(chan struct{}, cutParallel)
	var wg sync.WaitGroup
	for _, t := range ts {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			a.cut(t, code, ended)
		}()
	}
	wg.Wait()
}

// cut ends the connection of t.cl, made as t.c, for code, unless it is
// being ended already (t.c is no longer its entry): it is forgotten first,
// so that nothing it sends meanwhile passes the ACL (nor its will:
// checkWill), then counted and logged (ended: before the client can see
// its end), then told why (end).
func (a *Auth) cut(t target, code packets.Code, ended func(target)) {
	c := t.c
	if !a.clients.CompareAndSwap(t.cl, c, &conn{id: c.id, anonymous: c.anonymous, clientID: c.clientID, revoked: true}) {
		return
	}
	ended(t)
	a.end(t.cl, code)
}

// end closes cl's connection for code. An MQTT 5 client whose CONNACK has
// gone is told why with a DISCONNECT; one still connecting (a ban or a
// revocation between its login and its CONNACK) is only cut off, since a
// DISCONNECT before the CONNACK breaks the protocol [MQTT-3.2.0-1], and so
// is an MQTT 3 client, which has no server DISCONNECT. The DISCONNECT's
// write is bounded (a second): a client that reads nothing must not hold
// up the broker's Stop, nor for long the others a revocation or an expiry
// ends with it (cutAll ends them together).
//
// The engine's reader meets the end either as a lost connection (the will
// path) or, when the Stop finds it between two packets, as a normal
// disconnection (no will), at random. For the connections that cut ends
// (revoked, banned, expired) it does not matter: they are marked revoked
// first, and checkWill drops a revoked connection's will, delayed or not
// (TestRevokedWillNeverGoes). A connection whose will must go is hung up
// instead (hangUp).
func (a *Auth) end(cl *mqtt.Client, code packets.Code) {
	if _, ok := a.established.Load(cl); ok && cl.Properties.ProtocolVersion == 5 {
		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		}
		_ = a.srv.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}
