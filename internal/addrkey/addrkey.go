package addrkey

import (
	"net/netip"
	"strings"
)

// prefixBits is the length of the IPv6 prefix one client is taken to own.
const prefixBits = 64

// Of returns the key of addr, which may be an address ("192.0.2.1",
// "2001:db8::1"), an address and port ("192.0.2.1:80", "[2001:db8::1]:80"),
// a bracketed IPv6 address, or a key already (Of is idempotent). A zone
// is dropped. An IPv4 address (mapped or not) is its key; an IPv6 address
// is keyed by its /64, "2001:db8:1:2::/64". Anything else is returned as
// it is (Valid reports false for it), so a remote that is not an IP
// address (a pipe, a test's name) is still a key of its own.
func Of(addr string) string {
	if a, ok := Addr(addr); ok {
		return Key(a)
	}
	if p, ok := parseKey(addr); ok {
		return p.String()
	}
	return addr
}

// Key returns the key of a (see Of); "" for the zero Addr.
func Key(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(prefixBits)
	return p.String()
}

// Valid reports whether addr names an address: whether Of(addr) is the
// key of an IP address.
func Valid(addr string) bool {
	if _, ok := Addr(addr); ok {
		return true
	}
	_, ok := parseKey(addr)
	return ok
}

// Addr parses an address as Of takes it (but not a key): unmapped,
// without its zone and port.
func Addr(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a.Unmap().WithZone(""), true
		}
	}
	return netip.Addr{}, false
}

// Host returns the address part of s (as Addr, in its usual text) or, if
// s holds no address, s as it is: the client's address for a log line or
// an audit entry, where its key would say less.
func Host(s string) string {
	if a, ok := Addr(s); ok {
		return a.String()
	}
	return s
}

// Prefix returns the addresses key covers: an IPv4 address's /32, an
// IPv6 /64; false when key is not the key of an address.
func Prefix(key string) (netip.Prefix, bool) {
	if a, ok := Addr(key); ok {
		if a.Is4() {
			return netip.PrefixFrom(a, 32), true
		}
		p, _ := a.Prefix(prefixBits)
		return p, true
	}
	return parseKey(key)
}

// parseKey parses an IPv6 /64 as Key writes it.
func parseKey(s string) (netip.Prefix, bool) {
	if !strings.HasSuffix(s, "/64") {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() != prefixBits {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}
