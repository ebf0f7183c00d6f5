package dashboard

import (
	"sync"
	"time"
)

// Login slow-down: after loginFree failures for one address or one user
// name, each further failure closes that key for twice as long as the
// last, from loginBase up to loginMax; a success for the pair clears both.
// Keys with no failure for loginForget are forgotten.
const (
	loginFree   = 5
	loginBase   = time.Second
	loginMax    = 5 * time.Minute
	loginForget = 15 * time.Minute
	// loginKeys bounds the memory the limiter holds; when full, the
	// oldest half is dropped.
	loginKeys = 100_000
)

// loginLimiter slows down password guessing against POST /auth/login, by
// client address and by user name (so neither many names from one address
// nor one name from many addresses gets far).
type loginLimiter struct {
	now func() time.Time

	// mu guards the fields below.
	mu   sync.Mutex
	keys map[string]*loginKey
}

type loginKey struct {
	failures int
	last     time.Time // last failure
	until    time.Time // closed until then
}

func newLoginLimiter(now func() time.Time) *loginLimiter {
	return &loginLimiter{now: now, keys: map[string]*loginKey{}}
}

func addrKey(addr string) string { return "a:" + addr }

// nameKey is the key of a user name; "" (a name no user can have) shares
// one key.
func nameKey(name string) string { return "n:" + name }

// wait returns how long login for name from addr stays closed; 0 means
// go ahead.
func (l *loginLimiter) wait(addr, name string) time.Duration {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var w time.Duration
	for _, k := range []string{addrKey(addr), nameKey(name)} {
		if e := l.keys[k]; e != nil && e.until.After(now) {
			w = max(w, e.until.Sub(now))
		}
	}
	return w
}

// fail records a failed login.
func (l *loginLimiter) fail(addr, name string) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.keys) >= loginKeys {
		l.prune(now)
	}
	for _, k := range []string{addrKey(addr), nameKey(name)} {
		e := l.keys[k]
		if e == nil || now.Sub(e.last) > loginForget {
			e = &loginKey{}
			l.keys[k] = e
		}
		e.failures++
		e.last = now
		if e.failures >= loginFree {
			d := loginBase << min(e.failures-loginFree, 20)
			e.until = now.Add(min(d, loginMax))
		}
	}
}

// succeed clears the record of addr and name.
func (l *loginLimiter) succeed(addr, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, addrKey(addr))
	delete(l.keys, nameKey(name))
}

// prune drops forgotten keys, and if that is not enough, the older half.
// mu must be held.
func (l *loginLimiter) prune(now time.Time) {
	for k, e := range l.keys {
		if now.Sub(e.last) > loginForget && !e.until.After(now) {
			delete(l.keys, k)
		}
	}
	if len(l.keys) < loginKeys*3/4 {
		return
	}
	cut := now.Add(-loginForget / 2)
	for k, e := range l.keys {
		if e.last.Before(cut) || len(l.keys) >= loginKeys/2 {
			delete(l.keys, k)
		}
	}
}

// size returns the number of keys held.
func (l *loginLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
