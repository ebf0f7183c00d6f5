package devices

import (
	"context"
	"errors"
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
// address AddrFree; the next waits in Begin until one ends, then goes on
// if the key is still open, or gets the key's wait if the ended attempts
// closed it; once a key has used its free failures it lets one attempt
// through at a time when it reopens; a success while others are pending
// keeps their count, so their End does not take another's place.
func TestLoginLimiterBegin(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewLoginLimiter(&LoginLimitOptions{Now: func() time.Time { return now }})
	o := l.Options()
	begin := func(name, addr string) time.Duration {
		t.Helper()
		w, err := l.Begin(context.Background(), name, addr)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	// busy reports whether Begin waits for the attempts being checked.
	busy := func(name, addr string) bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		w, err := l.Begin(ctx, name, addr)
		if err == nil && w == 0 {
			l.End(name, addr)
		}
		return errors.Is(err, context.DeadlineExceeded)
	}
	for i := range o.PairFree {
		if w := begin("bob", "10.0.0.1"); w != 0 {
			t.Fatalf("attempt %d held: %v", i, w)
		}
	}
	if !busy("bob", "10.0.0.1") {
		t.Fatalf("attempt %d went ahead at once", o.PairFree+1)
	}
	if w := l.Wait("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("Wait reports pending attempts as closed: %v", w)
	}
	// One waits; a success and its End let it on.
	got := make(chan time.Duration)
	go func() {
		w, _ := l.Begin(context.Background(), "bob", "10.0.0.1")
		got <- w
	}()
	l.Succeeded("bob", "10.0.0.1")
	l.End("bob", "10.0.0.1")
	if w := <-got; w != 0 {
		t.Fatalf("the waiting attempt after a success: %v", w)
	}
	if !busy("bob", "10.0.0.1") {
		t.Fatal("the success's End freed two places")
	}
	// One waits; the others fail and close the pair: it gets the wait.
	go func() {
		w, _ := l.Begin(context.Background(), "bob", "10.0.0.1")
		got <- w
	}()
	for range o.PairFree {
		l.Failed("bob", "10.0.0.1")
		l.End("bob", "10.0.0.1")
	}
	if w := <-got; w != o.Base {
		t.Fatalf("the waiting attempt after %d failures: wait %v, want %v", o.PairFree, w, o.Base)
	}
	now = now.Add(o.Base)
	if w := begin("bob", "10.0.0.1"); w != 0 {
		t.Fatalf("reopened: wait %v", w)
	}
	if !busy("bob", "10.0.0.1") {
		t.Fatal("a reopened key let a second attempt through at once")
	}
	l.End("bob", "10.0.0.1")

	// An address: AddrFree attempts of as many names at once.
	for i := range o.AddrFree {
		if w := begin(fmt.Sprint("n", i), "10.0.0.2"); w != 0 {
			t.Fatalf("name %d held: %v", i, w)
		}
	}
	if !busy("another", "10.0.0.2") {
		t.Fatalf("name %d went ahead at once", o.AddrFree+1)
	}
	if w := begin("bob", "10.0.0.3"); w != 0 {
		t.Fatalf("another address held: %v", w)
	}
}

// TestLoginLimiterEndForgetsEmptyKeys: the keys Begin made only to count
// an attempt being checked go with its End when it left no failure (a
// success clears its pair: on a node that took the login, as on the
// others, only the address's failures stay); a failure's stay.
func TestLoginLimiterEndForgetsEmptyKeys(t *testing.T) {
	l := NewLoginLimiter(nil)
	attempt := func(outcome func()) {
		t.Helper()
		if w, err := l.Begin(context.Background(), "carol", "10.0.0.9"); err != nil || w != 0 {
			t.Fatalf("Begin: %v, %v", w, err)
		}
		outcome()
		l.End("carol", "10.0.0.9")
	}
	attempt(func() { l.Succeeded("carol", "10.0.0.9") })
	if n := l.Size(); n != 0 {
		t.Fatalf("after a success: %d keys, want 0", n)
	}
	attempt(func() {}) // neither (a CONNECT refused for another reason)
	if n := l.Size(); n != 0 {
		t.Fatalf("after an attempt with no outcome: %d keys, want 0", n)
	}
	attempt(func() { l.Failed("carol", "10.0.0.9") })
	if n := l.Size(); n != 2 {
		t.Fatalf("after a failure: %d keys, want 2 (pair and address)", n)
	}
	attempt(func() { l.Succeeded("carol", "10.0.0.9") })
	if n := l.Size(); n != 1 {
		t.Fatalf("after a failure and a success: %d keys, want 1 (the address's)", n)
	}
}

// TestLoginThrottleCountsIPv6By64: an IPv6 client owns a /64, so failed
// logins from any addresses of one /64 count as from one address (a new
// address per guess gains nothing), and another /64 is not held up.
func TestLoginThrottleCountsIPv6By64(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewLoginLimiter(&LoginLimitOptions{Now: func() time.Time { return now }})
	o := l.Options()
	for i := range o.PairFree {
		l.Failed("alice", fmt.Sprintf("2001:db8:1:2::%x", i+1))
	}
	if w := l.Wait("alice", "2001:db8:1:2:ffff:ffff:ffff:fffe"); w != o.Base {
		t.Fatalf("alice from a fresh address of the /64: wait %v, want %v", w, o.Base)
	}
	if w := l.Wait("alice", "2001:db8:1:3::1"); w != 0 {
		t.Fatalf("alice from another /64 waits %v", w)
	}
	for i := range o.AddrFree {
		l.Failed(fmt.Sprintf("u%d", i), fmt.Sprintf("[2001:db8:9:9:%x::1]:1883", i))
	}
	if w := l.Wait("bob", "2001:db8:9:9::77"); w == 0 {
		t.Fatal("a spray from one /64 does not close it for other names")
	}
	// IPv4 as it was, mapped or not.
	for range o.PairFree {
		l.Failed("carol", "::ffff:192.0.2.7")
	}
	if w := l.Wait("carol", "192.0.2.7"); w == 0 {
		t.Fatal("an IPv4-mapped address counts apart from its IPv4 address")
	}
	if w := l.Wait("carol", "192.0.2.8"); w != 0 {
		t.Fatalf("carol from the next IPv4 address waits %v", w)
	}
}
