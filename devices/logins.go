package devices

import (
	"context"
	"sync"
	"time"

	"github.com/tether-iot/tether/internal/addrkey"
)

// LoginLimitOptions shape a LoginLimiter; zero fields take the defaults.
type LoginLimitOptions struct {
	// PairFree is the number of failures of one user name from one
	// address that closes that pair (default 5).
	PairFree int
	// AddrFree is the number of failures from one address, whatever the
	// names, that closes the address (default 50: people behind one NAT,
	// and devices whose secret was rotated, fail too).
	AddrFree int
	// Base is how long a key is closed by that failure; each further
	// failure doubles it, up to Max (defaults 1s
	// and 5m).
	Base, Max time.Duration
	// Forget is how long a key without failures is remembered (default
	// 15m).
	Forget time.Duration
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// loginKeys bounds the memory a LoginLimiter holds; when full, keys not
// closed and then the oldest half are dropped.
const loginKeys = 100_000

// LoginLimiter is the one login throttle of MQTT and HTTP (SPEC §5). It
// counts failed logins per (user name, address) and per address, and
// closes a key for a growing while once it has had its free failures:
// the pair key slows guessing one name, the address key slows spraying
// many names from one place. There is no key for a name alone, so nobody's
// failures from one address can keep the user from logging in from
// another. A success clears its pair, not its address (a guesser with one
// account of its own must not reset its address by logging in).
//
// It is safe for concurrent use; its memory is bounded.
type LoginLimiter struct {
	o LoginLimitOptions

	// mu guards keys, ended, onFailure and onCleared.
	mu   sync.Mutex
	keys map[string]*loginKey
	// ended is closed when an attempt ends, for those waiting in Begin;
	// nil while nobody waits.
	ended     chan struct{}
	onFailure []func(name, addr string)
	onCleared []func(name, addr string)
}

type loginKey struct {
	failures int
	last     time.Time // last failure
	until    time.Time // closed until then
	pending  int       // attempts let through by Begin, not yet ended
}

// NewLoginLimiter returns a limiter; o may be nil.
func NewLoginLimiter(o *LoginLimitOptions) *LoginLimiter {
	var opts LoginLimitOptions
	if o != nil {
		opts = *o
	}
	if opts.PairFree <= 0 {
		opts.PairFree = 5
	}
	if opts.AddrFree <= 0 {
		opts.AddrFree = 50
	}
	if opts.Base <= 0 {
		opts.Base = time.Second
	}
	if opts.Max <= 0 {
		opts.Max = 5 * time.Minute
	}
	if opts.Forget <= 0 {
		opts.Forget = 15 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &LoginLimiter{o: opts, keys: map[string]*loginKey{}}
}

// Options returns the limiter's options, defaults filled in.
func (l *LoginLimiter) Options() LoginLimitOptions { return l.o }

// pairKey and addrKey are a login's keys; an address counts by its
// addrkey.Of (an IPv6 client by its /64, which it owns whole).
func pairKey(name, addr string) string { return "p\x00" + name + "\x00" + addrkey.Of(addr) }
func addrKey(addr string) string       { return "a\x00" + addrkey.Of(addr) }

// Wait returns how long a login as name from addr stays closed; 0 means
// go ahead and check the credentials. addr is the client's IP address
// (without port).
func (l *LoginLimiter) Wait(name, addr string) time.Duration {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var w time.Duration
	for _, k := range [2]string{pairKey(name, addr), addrKey(addr)} {
		if e := l.keys[k]; e != nil && e.until.After(now) {
			w = max(w, e.until.Sub(now))
		}
	}
	return w
}

// Begin is Wait for an attempt whose credentials are about to be checked
// (a password's bcrypt takes tens of milliseconds). Wait alone lets
// through every attempt that arrives while a key is open, so a burst of
// concurrent guesses (a hundred connections, each checked before any of
// them had failed) was checked whole, where one after the other only the
// key's free failures are. So a key lets as many attempts be checked at
// once as it has failures left before it closes, at least one, and Begin
// waits (until ctx ends) while that many are being checked: as they end,
// their failures close the key for the waiting ones, or their successes
// let them on. It returns how long the key is closed, as Wait; or 0, and
// then the attempt goes ahead and counts as being checked until End,
// which the caller calls once it has recorded the attempt's outcome
// (Failed, Succeeded, or neither). An error is ctx's.
func (l *LoginLimiter) Begin(ctx context.Context, name, addr string) (time.Duration, error) {
	keys := [2]string{pairKey(name, addr), addrKey(addr)}
	for {
		now := l.o.Now()
		l.mu.Lock()
		var w time.Duration
		busy := false
		for i, k := range keys {
			switch e := l.keys[k]; {
			case e == nil:
			case e.until.After(now):
				w = max(w, e.until.Sub(now))
			case e.pending >= max(1, l.free(i)-e.live(now, l.o.Forget)):
				busy = true
			}
		}
		switch {
		case w > 0:
			l.mu.Unlock()
			return w, nil
		case busy:
			if l.ended == nil {
				l.ended = make(chan struct{})
			}
			ended := l.ended
			l.mu.Unlock()
			select {
			case <-ended:
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if len(l.keys) >= loginKeys {
			l.prune(now)
		}
		for _, k := range keys {
			e := l.keys[k]
			if e == nil {
				e = &loginKey{last: now}
				l.keys[k] = e
			}
			e.pending++
		}
		l.mu.Unlock()
		return 0, nil
	}
}

// End ends an attempt Begin let through.
func (l *LoginLimiter) End(name, addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.o.Now()
	for _, k := range [2]string{pairKey(name, addr), addrKey(addr)} {
		if e := l.keys[k]; e != nil && e.pending > 0 {
			e.pending--
			if e.pending == 0 && e.failures == 0 && !e.until.After(now) {
				delete(l.keys, k) // held only for the attempts being checked
			}
		}
	}
	if l.ended != nil {
		close(l.ended) // the attempts waiting in Begin look again
		l.ended = nil
	}
}

// free is the failures the i-th key of a login (0 its pair, 1 its
// address) has before it closes.
func (l *LoginLimiter) free(i int) int {
	if i == 1 {
		return l.o.AddrFree
	}
	return l.o.PairFree
}

// live is e's failures, none once they are forgotten.
func (e *loginKey) live(now time.Time, forget time.Duration) int {
	if now.Sub(e.last) > forget {
		return 0
	}
	return e.failures
}

// OnFailure calls f with each failed login, after the limiter has
// counted it (Bans.LoginFailed: intrusion detection builds on these
// events). f runs on the caller's goroutine and must not block.
func (l *LoginLimiter) OnFailure(f func(name, addr string)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onFailure = append(l.onFailure, f)
}

// Failed records a failed login as name from addr.
func (l *LoginLimiter) Failed(name, addr string) {
	l.mu.Lock()
	l.failed(name, addr)
	fns := l.onFailure
	l.mu.Unlock()
	for _, f := range fns {
		f(name, addr)
	}
}

// FailedElsewhere counts a failed login another node of the cluster saw
// (its Bans share it), without calling the OnFailure functions: the
// throttle of each node counts every node's failures, so spreading
// guesses over the nodes behind a load balancer gains nothing.
func (l *LoginLimiter) FailedElsewhere(name, addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed(name, addr)
}

// failed counts a failure; mu must be held.
func (l *LoginLimiter) failed(name, addr string) {
	now := l.o.Now()
	if len(l.keys) >= loginKeys {
		l.prune(now)
	}
	for i, k := range [2]string{pairKey(name, addr), addrKey(addr)} {
		e := l.keys[k]
		if e == nil {
			e = &loginKey{}
			l.keys[k] = e
		} else if now.Sub(e.last) > l.o.Forget {
			*e = loginKey{pending: e.pending}
		}
		e.failures++
		e.last = now
		free := l.free(i)
		if e.failures >= free {
			d := l.o.Base << min(e.failures-free, 20)
			e.until = now.Add(min(d, l.o.Max))
		}
	}
}

// Succeeded clears the failures of name from addr (the address keeps its
// own).
func (l *LoginLimiter) Succeeded(name, addr string) {
	l.mu.Lock()
	k := pairKey(name, addr)
	e := l.keys[k]
	had := e != nil && e.failures > 0 // a key may be there for pending attempts only
	clearKey(e, k, l.keys)
	fns := l.onCleared
	l.mu.Unlock()
	if had {
		for _, f := range fns {
			f(name, addr)
		}
	}
}

// OnCleared calls f when a successful login clears failures of its name
// from its address (not for a login that had none: not on every
// login). f runs on the caller's goroutine and must not block.
func (l *LoginLimiter) OnCleared(f func(name, addr string)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onCleared = append(l.onCleared, f)
}

// SucceededElsewhere clears the failures of name from addr after a
// successful login on another node (OnCleared there), without calling
// the OnCleared functions.
func (l *LoginLimiter) SucceededElsewhere(name, addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := pairKey(name, addr)
	clearKey(l.keys[k], k, l.keys)
}

// clearKey forgets the failures of e, key k of keys; a key with pending
// attempts keeps their count (End takes them off). mu must be held.
func clearKey(e *loginKey, k string, keys map[string]*loginKey) {
	if e != nil && e.pending > 0 {
		*e = loginKey{pending: e.pending, last: e.last}
		return
	}
	delete(keys, k)
}

// Size returns the number of keys held.
func (l *LoginLimiter) Size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// prune drops forgotten keys, and if that is not enough, the older half.
// mu must be held.
func (l *LoginLimiter) prune(now time.Time) {
	for k, e := range l.keys {
		if now.Sub(e.last) > l.o.Forget && !e.until.After(now) && e.pending == 0 {
			delete(l.keys, k)
		}
	}
	if len(l.keys) < loginKeys*3/4 {
		return
	}
	cut := now.Add(-l.o.Forget / 2)
	for k, e := range l.keys {
		if e.pending == 0 && (e.last.Before(cut) || len(l.keys) >= loginKeys/2) {
			delete(l.keys, k)
		}
	}
}
