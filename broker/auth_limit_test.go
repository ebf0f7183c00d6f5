package broker

import (
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// authRawConnectFrom is authRawConnect from the loopback address local
// (any of 127.0.0.0/8), to stand for another client address.
func authRawConnectFrom(t testing.TB, local, addr string, version byte, clientID, user, pass string) byte {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	code, err := authRawHandshake(c, version, clientID, user, pass)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// TestAuthFailuresSlowedDown: after its free failures a device's name from
// one address is held (the limiter closes the pair for 20ms doubling to
// 100ms in this environment) and then checked as usual: the right secret
// still gets in from there once the hold is over, and at once from
// another address, whatever the failures elsewhere. The limiter's clock
// stands still: on the real one an attempt that came more than 20 ms
// after the failure before found the pair open again ("delayed = 2" at
// load average 14).
func TestAuthFailuresSlowedDown(t *testing.T) {
	e := startAuthEnv(t, false)
	e.clock.freeze()
	secret := e.device(t, "ok")
	free := e.auth.login.Options().PairFree
	for range free + 3 {
		if got := authRawConnectFrom(t, "127.0.0.2", e.tcp, 5, "ok", "ok", "guess"); got != 0x86 {
			t.Fatalf("CONNACK %#x", got)
		}
	}
	if n := authCount(t, e.auth.m.delayed); n < 3 {
		t.Fatalf("delayed = %v, want the attempts after %d failures held", n, free)
	}
	if w := e.auth.login.Wait("ok", "127.0.0.2"); w == 0 {
		t.Fatal("the guessing pair is not closed")
	}
	held := authCount(t, e.auth.m.delayed)
	// Another address: not held, let in.
	if got := authRawConnectFrom(t, "127.0.0.3", e.tcp, 5, "ok", "ok", secret); got != 0 {
		t.Fatalf("right secret from another address: CONNACK %#x", got)
	}
	if n := authCount(t, e.auth.m.delayed); n != held {
		t.Fatalf("the login from another address was held (%v → %v)", held, n)
	}
	// The guessing address too, after its hold.
	if got := authRawConnectFrom(t, "127.0.0.2", e.tcp, 4, "ok", "ok", secret); got != 0 {
		t.Fatalf("right secret after the hold: CONNACK %#x", got)
	}
	if w := e.auth.login.Wait("ok", "127.0.0.2"); w != 0 {
		t.Fatalf("the pair is still closed after a success: %v", w)
	}
}

// TestAuthThrottledLongRefused: a CONNECT whose key stays closed longer
// than the hold is refused with 0x9F (3.1.1: 0x03) without its
// credentials being checked, even the right ones.
func TestAuthThrottledLongRefused(t *testing.T) {
	e := startAuthEnv(t, false)
	// The limiter's clock stands still: on the real one the key opened
	// again when a loaded machine took longer than its closing (100 ms
	// at most here) between the failures and the CONNECT, and the right
	// secret got in (CONNACK 0, once in three runs at load 20).
	e.clock.freeze()
	secret := e.device(t, "dev")
	e.auth.hold = 10 * time.Millisecond // the environment closes keys for 20ms and more
	for range 10 {
		e.auth.login.Failed("dev", "127.0.0.4")
	}
	for _, v := range []struct{ version, want byte }{{5, 0x9F}, {4, 0x03}} {
		if got := authRawConnectFrom(t, "127.0.0.4", e.tcp, v.version, "dev", "dev", secret); got != v.want {
			t.Fatalf("MQTT %d: CONNACK %#x, want %#x", v.version, got, v.want)
		}
	}
}

// TestAuthConcurrentGuesses: a burst of concurrent CONNECTs guessing a
// user's password from one address has only the pair's free failures
// checked, as one guess after the other would: the limiter counts the
// attempts being checked (LoginLimiter.Begin), where it let through every
// CONNECT that came before any had failed (197 of 200 bcrypt checks at
// the defaults, instead of 5). The right password from another address
// still gets in, and so do concurrent logins with it.
func TestAuthConcurrentGuesses(t *testing.T) {
	e := startAuthEnv(t, false)
	e.clock.freeze()                          // a closed key stays closed
	e.auth.hold = 200 * time.Millisecond      // then the throttled are refused after it
	e.reg.SetPasswordCost(bcrypt.MinCost + 4) // checks long enough for the burst to overlap them
	pass := e.user(t, "vic", "viewer")
	const n = 50
	conns := make([]net.Conn, n)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	for i := range conns {
		c, err := d.Dial("tcp", e.tcp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	start := make(chan struct{})
	codes := make(chan byte, n)
	for i, c := range conns {
		go func() {
			<-start
			code, err := authRawHandshake(c, 5, fmt.Sprint("guess-", i), "vic", fmt.Sprint("wrong-", i))
			if err != nil {
				code = 0xFF
			}
			codes <- code
		}()
	}
	close(start)
	got := map[byte]int{}
	for range n {
		got[<-codes]++
	}
	free := e.auth.login.Options().PairFree
	if checked := authCount(t, e.auth.m.failures.WithLabelValues("bad_credentials", "tcp")); checked != float64(free) || got[0x86] != free {
		t.Fatalf("%v passwords checked, CONNACKs %v; want %d checked (0x86), the others throttled (0x9F)", checked, got, free)
	}
	if got[0x9F] != n-free {
		t.Fatalf("CONNACKs %v, want %d throttled (0x9F)", got, n-free)
	}
	if code := authRawConnectFrom(t, "127.0.0.6", e.tcp, 5, "vic-ok", "vic", pass); code != 0 {
		t.Fatalf("the right password from another address: CONNACK %#x", code)
	}
	// Concurrent logins with the right password wait for each other, and
	// all get in, however long the queue (the hold is not spent on it).
	// Another user's, whose hash is of the cheapest cost: the queue's
	// length is what counts here, and n checks of the dearer cost one
	// after another took over the handshake's 30 s under -race on a
	// loaded machine.
	e.reg.SetPasswordCost(bcrypt.MinCost)
	pass = e.user(t, "vera", "viewer")
	right := make(chan byte, n)
	for i := range n {
		go func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}
			c, err := d.Dial("tcp", e.tcp)
			if err != nil {
				right <- 0xFF
				return
			}
			defer c.Close()
			code, err := authRawHandshake(c, 5, fmt.Sprint("right-", i), "vera", pass)
			if err != nil {
				code = 0xFF
			}
			right <- code
		}()
	}
	for range n {
		if code := <-right; code != 0 {
			t.Fatalf("a concurrent login with the right password: CONNACK %#x", code)
		}
	}
}
