package devices

import (
	"fmt"
	"testing"
	"time"
)

func TestLoginLimiterBackoffAndBounds(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewLoginLimiter(&LoginLimitOptions{Now: func() time.Time { return now }})
	o := l.Options()
	for i := 0; i < o.PairFree-1; i++ {
		l.Failed("bob", "10.0.0.1")
	}
	if w := l.Wait("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("closed after %d failures: %v", o.PairFree-1, w)
	}
	var last time.Duration
	for i := 0; i < 30; i++ {
		l.Failed("bob", "10.0.0.1")
		w := l.Wait("bob", "10.0.0.1")
		if w < last || w > o.Max {
			t.Fatalf("failure %d: wait %v after %v", i, w, last)
		}
		last = w
	}
	if last != o.Max {
		t.Fatalf("wait tops out at %v, want %v", last, o.Max)
	}
	l.Succeeded("bob", "10.0.0.1")
	if w := l.Wait("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("still closed after success: %v", w)
	}
	// Memory stays bounded under a spray of names.
	for i := 0; i < loginKeys+10; i++ {
		l.Failed(fmt.Sprintf("user%d", i), "10.0.0.2")
	}
	if n := l.Size(); n > loginKeys {
		t.Fatalf("limiter holds %d keys", n)
	}
}

// TestLoginLimiterKeys: failures for a name from one address close that
// pair only; nobody's failures elsewhere delay the user's login from
// another address; many names failing from one address close the address.
func TestLoginLimiterKeys(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewLoginLimiter(&LoginLimitOptions{Now: func() time.Time { return now }})
	o := l.Options()
	for range 100 {
		l.Failed("alice", "198.51.100.7")
	}
	if w := l.Wait("alice", "198.51.100.7"); w == 0 {
		t.Fatal("the guessing pair is not closed")
	}
	if w := l.Wait("alice", "192.0.2.1"); w != 0 {
		t.Fatalf("alice from another address waits %v for a stranger's failures", w)
	}
	if w := l.Wait("bob", "198.51.100.7"); w == 0 {
		t.Fatal("an address failing 100 times is not closed for other names")
	}
	// A spray: one failure each for many names from one address.
	for i := range o.AddrFree - 1 {
		l.Failed(fmt.Sprintf("u%d", i), "203.0.113.9")
	}
	if w := l.Wait("carol", "203.0.113.9"); w != 0 {
		t.Fatalf("closed after %d failures from the address: %v", o.AddrFree-1, w)
	}
	l.Failed("u-last", "203.0.113.9")
	if w := l.Wait("carol", "203.0.113.9"); w != o.Base {
		t.Fatalf("address after %d failures: wait %v, want %v", o.AddrFree, w, o.Base)
	}
	// A success does not reopen the address.
	l.Succeeded("carol", "203.0.113.9")
	if w := l.Wait("dave", "203.0.113.9"); w == 0 {
		t.Fatal("a success reopened the address")
	}
	now = now.Add(o.Base)
	if w := l.Wait("dave", "203.0.113.9"); w != 0 {
		t.Fatalf("still closed after its time: %v", w)
	}
}

// TestLoginLimiterBegin: attempts being checked count against their keys'
// free failures: a pair lets PairFree attempts through at once and an
// address AddrFree, the next waits LoginPendingWait; an attempt ending
// makes room; once a key has used its free failures it lets one attempt
// through at a time when it reopens; a success while others are pending
// keeps their count, so their End does not take another's place.
func TestLoginLimiterBegin(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewLoginLimiter(&LoginLimitOptions{Now: func() time.Time { return now }})
	o := l.Options()
	for i := range o.PairFree {
		if w := l.Begin("bob", "10.0.0.1"); w != 0 {
			t.Fatalf("attempt %d held: %v", i, w)
		}
	}
	if w := l.Begin("bob", "10.0.0.1"); w != LoginPendingWait {
		t.Fatalf("attempt %d at once: wait %v, want %v", o.PairFree+1, w, LoginPendingWait)
	}
	if w := l.Wait("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("Wait reports pending attempts as closed: %v", w)
	}
	l.Succeeded("bob", "10.0.0.1") // one of them was right
	l.End("bob", "10.0.0.1")
	if w := l.Begin("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("an ended attempt made no room: %v", w)
	}
	if w := l.Begin("bob", "10.0.0.1"); w != LoginPendingWait {
		t.Fatalf("the success's End freed two places: %v", w)
	}
	for range o.PairFree {
		l.Failed("bob", "10.0.0.1")
		l.End("bob", "10.0.0.1")
	}
	if w := l.Begin("bob", "10.0.0.1"); w != o.Base {
		t.Fatalf("after %d failures: wait %v, want %v", o.PairFree, w, o.Base)
	}
	now = now.Add(o.Base)
	if w := l.Begin("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("reopened: wait %v", w)
	}
	if w := l.Begin("bob", "10.0.0.1"); w != LoginPendingWait {
		t.Fatalf("a reopened key let a second attempt through at once: %v", w)
	}
	l.End("bob", "10.0.0.1")

	// An address: AddrFree attempts of as many names at once.
	for i := range o.AddrFree {
		if w := l.Begin(fmt.Sprint("n", i), "10.0.0.2"); w != 0 {
			t.Fatalf("name %d held: %v", i, w)
		}
	}
	if w := l.Begin("another", "10.0.0.2"); w != LoginPendingWait {
		t.Fatalf("name %d at once: wait %v", o.AddrFree+1, w)
	}
	if w := l.Begin("bob", "10.0.0.3"); w != 0 {
		t.Fatalf("another address held: %v", w)
	}
}
