package listeners

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/addrkey"
)

// LimitOptions are the connection limits. 0 means unlimited.
type LimitOptions struct {
	// MaxConnections caps open MQTT connections over all listeners.
	MaxConnections int
	// MaxConnectionsPerIP caps open MQTT connections from one address.
	// Every per-address limit keys an address by addrkey.Of: an IPv6
	// address by its /64.
	MaxConnectionsPerIP int
	// ConnectionRatePerIP is how many new connections per second one
	// address may open, with a burst of as many.
	ConnectionRatePerIP int
	// MaxPendingPerIP caps the connections from one address that are not
	// a logged-in MQTT client: an MQTT connection (any transport) until
	// the broker has answered its CONNECT, and an HTTP connection for its
	// whole life unless it becomes MQTT over WebSocket (PendingListener).
	MaxPendingPerIP int
}

// Limiter admits or refuses new connections by the LimitOptions. One
// Limiter is shared by all of a broker's listeners; a nil *Limiter admits
// everything. A refused connection is closed before the engine sees it
// (no CONNACK: nothing has been read yet) and counted by reason.
//
// Memory is bounded by the addresses that have a connection open or opened
// one within the last second.
type Limiter struct {
	opts LimitOptions

	// refused counts refusals by limit: tether_connections_limited_total.
	refused                                                                *prometheus.CounterVec
	refusedTotal, refusedPerIP, refusedRate, refusedBanned, refusedPending prometheus.Counter

	// banned, when set, refuses an address that is banned (SetBanned).
	banned func(ip string) bool

	// mu guards the fields below.
	mu      sync.Mutex
	open    int
	addrs   map[string]*addrLimit
	swept   time.Time
	pending map[string]int // connections not logged in, by address
}

// addrLimit is one address's open connections and connection-rate bucket.
type addrLimit struct {
	open   int
	tokens float64
	last   time.Time
}

// NewLimiter returns a limiter; with zero opts it admits everything but
// still reports its (zero) counts.
func NewLimiter(opts LimitOptions) *Limiter {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_connections_limited_total",
		Help: "Connections refused by a connection limit or a ban, by limit (banned: the address is banned; max_pending_connections_per_ip: MQTT before its CONNECT is answered, and HTTP)."}, []string{"limit"})
	return &Limiter{
		opts:           opts,
		addrs:          map[string]*addrLimit{},
		pending:        map[string]int{},
		refusedPending: refused.WithLabelValues("max_pending_connections_per_ip"),
		refused:        refused,
		refusedTotal:   refused.WithLabelValues("max_connections"),
		refusedPerIP:   refused.WithLabelValues("max_connections_per_ip"),
		refusedRate:    refused.WithLabelValues("connection_rate_per_ip"),
		refusedBanned:  refused.WithLabelValues("banned"),
	}
}

// SetBanned makes the limiter refuse every connection from an address
// banned reports (intrusion detection: devices.Bans.AddressBanned), before
// anything is read from it. Call it before the listeners serve.
func (l *Limiter) SetBanned(banned func(ip string) bool) { l.banned = banned }

// admit reserves a place for a connection from addr. It returns the
// release to call when the connection ends, or ok false (and counts the
// refusal).
func (l *Limiter) admit(addr net.Addr) (release func(), ok bool) {
	if l == nil {
		return func() {}, true
	}
	ip := addrKey(addr)
	if l.banned != nil && l.banned(ip) {
		l.refusedBanned.Inc()
		return nil, false
	}
	if l.opts.MaxConnections == 0 && l.opts.MaxConnectionsPerIP == 0 && l.opts.ConnectionRatePerIP == 0 {
		return func() {}, true
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	if l.opts.MaxConnections > 0 && l.open >= l.opts.MaxConnections {
		l.refusedTotal.Inc()
		return nil, false
	}
	a := l.addrs[ip]
	if a == nil {
		a = &addrLimit{tokens: float64(l.opts.ConnectionRatePerIP), last: now}
		l.addrs[ip] = a
	}
	if l.opts.MaxConnectionsPerIP > 0 && a.open >= l.opts.MaxConnectionsPerIP {
		l.refusedPerIP.Inc()
		return nil, false
	}
	if r := float64(l.opts.ConnectionRatePerIP); r > 0 {
		a.tokens = min(r, a.tokens+now.Sub(a.last).Seconds()*r)
		a.last = now
		if a.tokens < 1 {
			l.refusedRate.Inc()
			l.forgetIdle(ip, a)
			return nil, false
		}
		a.tokens--
	}
	l.open++
	a.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.open--
			a.open--
			l.forgetIdle(ip, a)
		})
	}, true
}

// admitPending reserves one of addr's places for a connection that is not
// a logged-in MQTT client (LimitOptions.MaxPendingPerIP). It returns the
// release to call (idempotent) once it is one, or when it ends; or ok
// false, and counts the refusal. Without the limit it admits everything.
func (l *Limiter) admitPending(addr net.Addr) (release func(), ok bool) {
	if l == nil || l.opts.MaxPendingPerIP <= 0 {
		return func() {}, true
	}
	ip := addrKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending[ip] >= l.opts.MaxPendingPerIP {
		l.refusedPending.Inc()
		return nil, false
	}
	l.pending[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.pending[ip]--; l.pending[ip] <= 0 {
				delete(l.pending, ip)
			}
		})
	}, true
}

// forgetIdle drops an address's entry once it holds nothing: no open
// connection and, when rates are limited, a full bucket.
func (l *Limiter) forgetIdle(ip string, a *addrLimit) {
	if a.open > 0 {
		return
	}
	if l.opts.ConnectionRatePerIP == 0 {
		delete(l.addrs, ip)
	}
}

// sweep drops, at most once a second, the entries whose bucket has
// refilled and that have nothing open.
func (l *Limiter) sweep(now time.Time) {
	if l.opts.ConnectionRatePerIP == 0 || now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	for ip, a := range l.addrs {
		if a.open == 0 && now.Sub(a.last) >= time.Second {
			delete(l.addrs, ip)
		}
	}
}

// addrKey is the key of the address addr is from (addrkey.Of: an IPv6
// client is held to its limits by its /64).
func addrKey(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	return addrkey.Of(addr.String())
}

// Describe implements prometheus.Collector.
func (l *Limiter) Describe(ch chan<- *prometheus.Desc) { l.refused.Describe(ch) }

// Collect implements prometheus.Collector.
func (l *Limiter) Collect(ch chan<- prometheus.Metric) { l.refused.Collect(ch) }

// ErrLimited is returned for a connection refused by a Limiter.
var ErrLimited = errors.New("connection refused by a connection limit")
