package forwarded

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/tether-iot/tether/internal/addrkey"
)

// Proxies are the reverse proxies and load balancers whose word about the
// client is believed (http.trusted_proxies): their X-Forwarded-For,
// X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Port and RFC 7239
// Forwarded headers, and their PROXY protocol headers. It is the one
// place that decides a client's address, for MQTT over WebSocket, the
// HTTP API and the connection limits alike. A nil *Proxies trusts nobody.
type Proxies struct {
	nets []*net.IPNet
}

// ParseProxies parses http.trusted_proxies: IPs or CIDRs. An error names
// the bad entry.
func ParseProxies(list []string) (*Proxies, error) {
	p := &Proxies{}
	for _, s := range list {
		n, err := ParseCIDROrIP(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
		}
		p.nets = append(p.nets, n)
	}
	return p, nil
}

// ParseCIDROrIP parses "10.0.0.0/8" or a single address such as
// "127.0.0.1": the one CIDR parser of http.trusted_proxies,
// mqtt.proxy_protocol_from and security.ban_exempt.
func ParseCIDROrIP(s string) (*net.IPNet, error) {
	if strings.Contains(s, "/") {
		_, n, err := net.ParseCIDR(s)
		return n, err
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("not an IP address or CIDR")
	}
	bits := 128
	if ip4 := ip.To4(); ip4 != nil {
		ip, bits = ip4, 32
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}, nil
}

// Empty reports whether p trusts nobody.
func (p *Proxies) Empty() bool { return p == nil || len(p.nets) == 0 }

// Contains reports whether ip is a trusted proxy's address.
func (p *Proxies) Contains(ip netip.Addr) bool {
	if p == nil || !ip.IsValid() {
		return false
	}
	std := net.IP(ip.Unmap().AsSlice())
	for _, n := range p.nets {
		if n.Contains(std) {
			return true
		}
	}
	return false
}

// Trusts reports whether r came straight from a trusted proxy.
func (p *Proxies) Trusts(r *http.Request) bool {
	return p.Contains(PeerAddr(r))
}

// ClientAddr is the address r came from: the peer's, or, when the peer is
// a trusted proxy, the nearest address in its forwarding chain that is not
// a trusted proxy (the right-most one: what a client wrote to the left of
// it is not believed). The chain is X-Forwarded-For, or, when a request
// has none, the for= parameters of RFC 7239 Forwarded. A hop that is not
// an address (garbage, "unknown", an obfuscated name) ends the walk at the
// last address believed. The zero Addr means RemoteAddr was not an address.
func (p *Proxies) ClientAddr(r *http.Request) netip.Addr {
	addr := PeerAddr(r)
	if !p.Contains(addr) {
		return addr
	}
	hops := forwardedFor(r.Header)
	for i := len(hops) - 1; i >= 0; i-- {
		ip, ok := parseHop(hops[i])
		if !ok {
			break
		}
		addr = ip
		if !p.Contains(ip) {
			break
		}
	}
	return addr
}

// ClientIP is ClientAddr as text; when RemoteAddr is not an address, it
// is RemoteAddr's host part as it was.
func (p *Proxies) ClientIP(r *http.Request) string {
	if a := p.ClientAddr(r); a.IsValid() {
		return a.String()
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// OverTLS reports whether the client reached us over TLS: directly, or
// through a trusted proxy that says so (X-Forwarded-Proto, or Forwarded
// proto=).
func (p *Proxies) OverTLS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	scheme, _ := p.forwardedScheme(r)
	return scheme == "https"
}

// forwardedScheme is the scheme a trusted proxy says the client used:
// X-Forwarded-Proto, else the proto= of the nearest Forwarded element;
// "" when the peer is not trusted or says nothing. Of a list, the value
// nearest us (the right-most) is taken: a proxy that appends puts its own
// last.
func (p *Proxies) forwardedScheme(r *http.Request) (string, bool) {
	if !p.Trusts(r) {
		return "", false
	}
	if v := lastListValue(r.Header, "X-Forwarded-Proto"); v != "" {
		return strings.ToLower(v), true
	}
	if els := forwardedElements(r.Header); len(els) > 0 {
		if v := els[len(els)-1]["proto"]; v != "" {
			return strings.ToLower(v), true
		}
	}
	return "", false
}

// forwardedHost is the host (with any port) a trusted proxy says the
// client asked for: X-Forwarded-Host, else the host= of the nearest
// Forwarded element, else, when only X-Forwarded-Port is sent, the Host;
// with X-Forwarded-Port when the host has no port. "" when the peer is
// not trusted or says nothing.
func (p *Proxies) forwardedHost(r *http.Request) string {
	if !p.Trusts(r) {
		return ""
	}
	host := lastListValue(r.Header, "X-Forwarded-Host")
	if host == "" {
		if els := forwardedElements(r.Header); len(els) > 0 {
			host = els[len(els)-1]["host"]
		}
	}
	port := lastListValue(r.Header, "X-Forwarded-Port")
	if host == "" && port != "" {
		host = r.Host // AWS ALB: the Host as it was, and the port apart
	}
	if host == "" {
		return ""
	}
	if port != "" && !hasPort(host) {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	return host
}

// hasPort reports whether a Host value carries a port.
func hasPort(host string) bool {
	if strings.HasPrefix(host, "[") {
		return strings.Contains(host, "]:")
	}
	return strings.Count(host, ":") == 1
}

// PeerAddr is r's RemoteAddr as an address (zero when it is not one).
func PeerAddr(r *http.Request) netip.Addr {
	a, _ := addrkey.Addr(r.RemoteAddr)
	return a
}

// forwardedFor is the chain of client addresses, nearest last: every
// X-Forwarded-For entry, or, when there is none, every Forwarded for=.
func forwardedFor(h http.Header) []string {
	var hops []string
	for _, v := range h.Values("X-Forwarded-For") {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				hops = append(hops, s)
			}
		}
	}
	if len(hops) > 0 {
		return hops
	}
	for _, el := range forwardedElements(h) {
		hops = append(hops, el["for"]) // "" (no for=) is not an address: it ends the walk
	}
	return hops
}

// parseHop parses one forwarding hop: "192.0.2.1", "2001:db8::1",
// "[2001:db8::1]", "192.0.2.1:4711" or "[2001:db8::1]:4711".
// A zone (a sender's own interface name) is refused.
func parseHop(s string) (netip.Addr, bool) {
	if strings.Contains(s, "%") {
		return netip.Addr{}, false
	}
	return addrkey.Addr(s)
}

// lastListValue is the right-most entry of a comma-separated header.
func lastListValue(h http.Header, name string) string {
	vs := h.Values(name)
	for i := len(vs) - 1; i >= 0; i-- {
		parts := strings.Split(vs[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			if s := strings.TrimSpace(parts[j]); s != "" {
				return s
			}
		}
	}
	return ""
}

// maxForwarded bounds the elements read from Forwarded headers.
const maxForwarded = 64

// forwardedElements parses RFC 7239 Forwarded headers into their
// elements, in order, each a map of lower-case parameter names to values
// (quotes removed). A malformed element is an empty map, so that a walk
// over for= stops there.
func forwardedElements(h http.Header) []map[string]string {
	var out []map[string]string
	for _, v := range h.Values("Forwarded") {
		for _, el := range splitQuoted(v, ',') {
			if len(out) == maxForwarded {
				return out
			}
			m := map[string]string{}
			for _, pair := range splitQuoted(el, ';') {
				pair = strings.TrimSpace(pair)
				if pair == "" {
					continue
				}
				k, val, ok := strings.Cut(pair, "=")
				k = strings.ToLower(strings.TrimSpace(k))
				val = strings.TrimSpace(val)
				if !ok || k == "" {
					m = map[string]string{}
					break
				}
				if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
					val = strings.ReplaceAll(val[1:len(val)-1], `\"`, `"`)
				}
				if _, dup := m[k]; dup {
					m = map[string]string{} // a parameter twice is malformed [RFC 7239 4]
					break
				}
				m[k] = val
			}
			out = append(out, m)
		}
	}
	return out
}

// splitQuoted splits s at sep outside double quotes.
func splitQuoted(s string, sep byte) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
