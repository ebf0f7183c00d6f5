package addrkey

import (
	"net/netip"
	"testing"
)

func TestOf(t *testing.T) {
	for _, c := range []struct {
		in, want string
		valid    bool
	}{
		{"192.0.2.1", "192.0.2.1", true},
		{"192.0.2.1:1883", "192.0.2.1", true},
		{"::ffff:192.0.2.1", "192.0.2.1", true},
		{"[::ffff:192.0.2.1]:1883", "192.0.2.1", true},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", true},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64", true},
		{"[2001:db8:1:2:ffff::9]:443", "2001:db8:1:2::/64", true},
		{"[2001:db8:1:2::9]", "2001:db8:1:2::/64", true},
		{"fe80::1%eth0", "fe80::/64", true},
		{"[fe80::1%eth0]:80", "fe80::/64", true},
		{"::1", "::/64", true},
		{"[::1]:5", "::/64", true},
		{"2001:db8:1:2::/64", "2001:db8:1:2::/64", true},
		{"2001:db8:1:2:9::/64", "2001:db8:1:2::/64", true}, // masked
		{"2001:db8::/48", "2001:db8::/48", false},          // not a key: as it is
		{"::ffff:192.0.2.0/64", "::ffff:192.0.2.0/64", false},
		{"10.0.0.0/64", "10.0.0.0/64", false},
		{"", "", false},
		{"pipe", "pipe", false},
		{"example.com:80", "example.com:80", false},
	} {
		if got := Of(c.in); got != c.want {
			t.Errorf("Of(%q) = %q, want %q", c.in, got, c.want)
		}
		if got := Valid(c.in); got != c.valid {
			t.Errorf("Valid(%q) = %v, want %v", c.in, got, c.valid)
		}
	}
}

func TestHostAndPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80":            "192.0.2.1",
		"[::ffff:192.0.2.1]:80":   "192.0.2.1",
		"[2001:db8::1%eth0]:1883": "2001:db8::1",
		"pipe":                    "pipe",
	} {
		if got := Host(in); got != want {
			t.Errorf("Host(%q) = %q, want %q", in, got, want)
		}
	}
	p, ok := Prefix("2001:db8:1:2::/64")
	if !ok || !p.Contains(netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:ffff")) || p.Contains(netip.MustParseAddr("2001:db8:1:3::")) {
		t.Errorf("Prefix(2001:db8:1:2::/64) = %v %v", p, ok)
	}
	if p, ok := Prefix("192.0.2.1"); !ok || p.String() != "192.0.2.1/32" {
		t.Errorf("Prefix(192.0.2.1) = %v %v", p, ok)
	}
	if _, ok := Prefix("2001:db8::/48"); ok {
		t.Error("Prefix took a /48")
	}
}

// FuzzAddrKey: Of never fails, is idempotent, and the key of an address
// covers it.
func FuzzAddrKey(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "[2001:db8::1]:80", "::ffff:10.0.0.1", "fe80::1%eth0",
		"2001:db8:1:2::/64", "2001:db8::/48", "", "[", "[]:1", "::ffff:1.2.3.4/64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k := Of(s)
		if Of(k) != k {
			t.Fatalf("Of(%q) = %q, Of of that = %q", s, k, Of(k))
		}
		if Valid(s) != Valid(k) {
			t.Fatalf("Valid(%q) = %v, Valid(%q) = %v", s, Valid(s), k, Valid(k))
		}
		a, ok := Addr(s)
		if !ok {
			return
		}
		p, ok := Prefix(k)
		if !ok || !p.Contains(a) {
			t.Fatalf("key %q of %q (%v) does not cover it", k, s, a)
		}
		if a.Is4() != (k == a.String()) {
			t.Fatalf("key %q of IPv4 %v", k, a)
		}
	})
}
