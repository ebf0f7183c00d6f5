package devices

import (
	"net"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestBansThresholdWindowDuration(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	_, loop, _ := net.ParseCIDR("127.0.0.0/8")
	b := NewBans(&BanOptions{Threshold: 3, Window: time.Minute, Duration: 10 * time.Minute, Exempt: []*net.IPNet{loop}, Now: clk.Now})
	banned := make(chan Ban, 4)
	b.OnBan(func(x Ban) { banned <- x })

	// Two refusals, then the window passes: no ban.
	b.LoginFailed("alice", "203.0.113.7")
	b.LoginFailed("bob", "203.0.113.7")
	clk.Add(2 * time.Minute)
	b.LoginFailed("carol", "203.0.113.7")
	if _, ok := b.Banned("dave", "203.0.113.7"); ok {
		t.Fatal("banned for refusals spread over more than the window")
	}
	// A device's ACL denials count for it there, not for its address.
	b.Refused(Refusal{Kind: "acl", Address: "203.0.113.7", Identity: "d1", Detail: "publish x"})
	b.LoginFailed("erin", "203.0.113.7")
	if _, ok := b.Banned("dave", "203.0.113.7"); ok {
		t.Fatal("an identity's ACL denial counted for its address")
	}
	b.Refused(Refusal{Kind: "acl", Address: "203.0.113.7", Detail: "anonymous publish x"})
	ban, ok := b.Banned("anyone", "203.0.113.7")
	if !ok || ban.Key != "ip:203.0.113.7" || ban.Kind != "address" {
		t.Fatalf("after 3 refusals within the window: %+v %v", ban, ok)
	}
	if got := <-banned; got.Key != ban.Key {
		t.Fatalf("OnBan got %+v", got)
	}
	if !b.AddressBanned("203.0.113.7") || b.AddressBanned("203.0.113.8") {
		t.Fatal("AddressBanned")
	}
	// Another address is not affected: a correct login from elsewhere.
	if _, ok := b.Banned("alice", "198.51.100.1"); ok {
		t.Fatal("a ban reached another address")
	}
	// Loopback is exempt as an address, but an identity sinning there is
	// banned there only.
	for range 3 {
		b.LoginFailed("mallory", "127.0.0.1")
	}
	if b.AddressBanned("127.0.0.1") {
		t.Fatal("an exempt address was banned")
	}
	if _, ok := b.Banned("alice", "127.0.0.1"); ok {
		t.Fatal("alice refused at loopback for mallory's failures")
	}
	if ban, ok := b.Banned("mallory", "127.0.0.1"); !ok || ban.Key != "id:mallory@127.0.0.1" {
		t.Fatalf("mallory at loopback: %+v %v", ban, ok)
	}
	if _, ok := b.Banned("mallory", "198.51.100.1"); ok {
		t.Fatal("an identity ban reached another address")
	}
	if n := len(b.Active()); n != 2 {
		t.Fatalf("active bans: %d", n)
	}
	if r := b.Recent(); len(r) != 9 || r[0].Identity != "mallory" || r[len(r)-1].Identity != "alice" {
		t.Fatalf("recent: %+v", r)
	}
	if o := b.Offenders(2); len(o) != 2 || o[0].Key != "ip:203.0.113.7" || o[0].Total != 5 ||
		o[1].Key != "id:mallory@127.0.0.1" || o[1].Identity != "mallory" || o[1].Address != "127.0.0.1" || !o[1].Banned {
		t.Fatalf("offenders: %+v", o)
	}
	// Lift, and expiry.
	if _, ok := b.Lift("id:mallory@127.0.0.1"); !ok {
		t.Fatal("lift failed")
	}
	if _, ok := b.Lift("id:mallory@127.0.0.1"); ok {
		t.Fatal("lifted twice")
	}
	if _, ok := b.Banned("mallory", "127.0.0.1"); ok {
		t.Fatal("still banned after the lift")
	}
	clk.Add(10 * time.Minute)
	if b.AddressBanned("203.0.113.7") || len(b.Active()) != 0 {
		t.Fatal("a ban outlived its duration")
	}
}

func TestBansOffAndTrustedProxies(t *testing.T) {
	_, proxy, _ := net.ParseCIDR("10.0.0.1/32")
	b := NewBans(&BanOptions{Threshold: 2, TrustedProxies: []*net.IPNet{proxy}})
	for range 5 {
		b.LoginFailed("", "10.0.0.1")
	}
	if b.AddressBanned("10.0.0.1") {
		t.Fatal("a trusted proxy was banned")
	}
	off := NewBans(&BanOptions{Threshold: -1})
	for range 500 {
		off.LoginFailed("x", "203.0.113.9")
	}
	if off.Enabled() || off.AddressBanned("203.0.113.9") || len(off.Recent()) != recentRefusals {
		t.Fatal("bans off: banned, or refusals not kept")
	}
}

func TestLoginLimiterOnFailureFeedsBans(t *testing.T) {
	l := NewLoginLimiter(nil)
	b := NewBans(&BanOptions{Threshold: 2})
	l.OnFailure(b.LoginFailed)
	l.Failed("a", "203.0.113.1")
	l.Failed("b", "203.0.113.1")
	if !b.AddressBanned("203.0.113.1") {
		t.Fatal("the limiter's failures did not reach the bans")
	}
}

// TestBansIPv6Keys: a ban of an IPv6 address is its /64's; a /64 that
// holds a trusted proxy or an exempt address is never banned whole (its
// clients' identities still are); another node's ban of a full IPv6
// address (an older node) is taken up as its /64's, and a lift may name
// the address in full.
func TestBansIPv6Keys(t *testing.T) {
	_, proxy, _ := net.ParseCIDR("2001:db8:5:5::1/128")
	b := NewBans(&BanOptions{Threshold: 2, TrustedProxies: []*net.IPNet{proxy}})
	b.LoginFailed("x", "2001:db8:1:2::1")
	b.LoginFailed("y", "[2001:db8:1:2::2]:1883")
	if !b.AddressBanned("2001:db8:1:2:abcd::1") || b.AddressBanned("2001:db8:1:3::1") {
		t.Fatal("the /64 is not banned, or its neighbour is")
	}
	for range 3 {
		b.LoginFailed("z", "2001:db8:5:5::9") // a client beside the proxy
	}
	if b.AddressBanned("2001:db8:5:5::1") {
		t.Fatal("the trusted proxy's /64 was banned")
	}
	if _, ok := b.Banned("z", "2001:db8:5:5::9"); !ok {
		t.Fatal("the identity beside the proxy is not banned")
	}
	if _, ok := b.Lift("ip:2001:db8:1:2::77"); !ok || b.AddressBanned("2001:db8:1:2::1") {
		t.Fatal("lifting by a full address of the /64")
	}
	c := NewBans(&BanOptions{Threshold: 2})
	now := time.Now()
	if !c.Adopt(Ban{Kind: "address", Address: "2001:db8:7:7::3", Since: now, Until: now.Add(time.Minute)}) ||
		!c.AddressBanned("2001:db8:7:7::4") {
		t.Fatal("another node's ban of a full IPv6 address does not cover its /64")
	}
	if c.Adopt(Ban{Kind: "address", Address: "2001:db8::/48", Since: now, Until: now.Add(time.Minute)}) {
		t.Fatal("adopted a ban of a /48")
	}
}
