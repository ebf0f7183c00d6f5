package broker

import (
	"net"
	"sync"
	"time"
)

// failures remembers recent failed logins per remote address and per user
// name, and says how long to wait before refusing the next one: nothing
// for the first, then FailureDelay doubling up to MaxFailureDelay. The
// wait is spent on the failing connection's own goroutine, so it slows the
// guesser without blocking anyone else.
type failures struct {
	base, max, window time.Duration

	// mu guards m.
	mu sync.Mutex
	m  map[string]*failure
}

type failure struct {
	n    int
	last time.Time
}

// maxFailureKeys bounds the memory the table takes.
const maxFailureKeys = 1 << 16

func newFailures(base, max, window time.Duration) *failures {
	if base <= 0 {
		base = 250 * time.Millisecond
	}
	if max <= 0 {
		max = 5 * time.Second
	}
	if window <= 0 {
		window = 5 * time.Minute
	}
	return &failures{base: base, max: max, window: window, m: map[string]*failure{}}
}

// failed records a failure from ip for user and returns the delay to
// apply: the larger of the two keys'.
func (f *failures) failed(ip, user string) time.Duration {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= maxFailureKeys {
		f.sweep(now)
	}
	n := 0
	for _, k := range []string{"ip:" + ip, "user:" + user} {
		if k == "ip:" || k == "user:" {
			continue
		}
		e := f.m[k]
		if e == nil || now.Sub(e.last) > f.window {
			e = &failure{}
			f.m[k] = e
		}
		e.n++
		e.last = now
		n = max(n, e.n)
	}
	if n < 2 {
		return 0
	}
	d := f.base
	for i := 2; i < n && d < f.max; i++ {
		d *= 2
	}
	return min(d, f.max)
}

// succeeded forgets user's failures (not the address's).
func (f *failures) succeeded(user string) {
	f.mu.Lock()
	delete(f.m, "user:"+user)
	f.mu.Unlock()
}

// sweep drops old entries; if the table is still full, all of them.
func (f *failures) sweep(now time.Time) {
	for k, e := range f.m {
		if now.Sub(e.last) > f.window {
			delete(f.m, k)
		}
	}
	if len(f.m) >= maxFailureKeys {
		clear(f.m)
	}
}

// remoteIP is the address part of host:port.
func remoteIP(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
