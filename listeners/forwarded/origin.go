package forwarded

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
)

// OriginPolicy decides which web pages may open /mqtt: the browser's
// Origin header must name this server as the page's user reached it, or
// an origin the configuration allows. Clients that send no Origin (every
// MQTT client that is not a browser) are not concerned.
//
// An upgrade with an Origin passes when
//   - the Origin is http.public_url's host and port, or matches
//     http.allowed_origins; or
//   - the Origin is the request's own origin (host and port, a default
//     port equal to none; the scheme is not compared, see sameHostPort)
//     and the server is known by that host:
//     an IP literal, localhost, the machine's host name, a name of the TLS
//     certificate, or a host that a trusted proxy forwarded.
//
// The request's own origin is its Host and the listener's scheme; from a
// trusted proxy (http.trusted_proxies), X-Forwarded-Host, -Proto and
// -Port or RFC 7239 Forwarded replace them. From anyone else those
// headers are ignored: they never widen the check.
//
// The known-host rule stops DNS rebinding: a page on evil.example whose
// name an attacker re-points at the server sends Host and Origin both
// evil.example, and that name is not known. Behind a proxy the proxy's
// server names decide which names reach Tether (the configurations in
// deploy/ refuse the others); http.public_url pins the one public name.
type OriginPolicy struct {
	// public is the origin of http.public_url, "scheme://host[:port]"
	// normalized; "" when unset.
	public string
	// publicHost is public's host name.
	publicHost string
	patterns   []string
	proxies    *Proxies
	// names returns further host names the server is known by (the TLS
	// certificate's); may be nil.
	names func() []string
	// hostnames are the machine's own names.
	hostnames []string
}

// OriginOptions configure an OriginPolicy.
type OriginOptions struct {
	// PublicURL is http.public_url ("https://iot.example.com"); "" for none.
	PublicURL string
	// AllowedOrigins are http.allowed_origins: host patterns
	// ("app.example.com", "*.example.com") or origins ("https://host").
	AllowedOrigins []string
	// Proxies are the trusted proxies; nil trusts nobody.
	Proxies *Proxies
	// Names returns the names the server is known by besides the
	// machine's host name, e.g. its certificate's; nil for none.
	Names func() []string
}

// NewOriginPolicy returns the policy; an unusable PublicURL is an error.
func NewOriginPolicy(o OriginOptions) (*OriginPolicy, error) {
	p := &OriginPolicy{patterns: o.AllowedOrigins, proxies: o.Proxies, names: o.Names}
	if o.PublicURL != "" {
		u, err := ParsePublicURL(o.PublicURL)
		if err != nil {
			return nil, err
		}
		p.public, _ = normalizeOrigin(u.Scheme, u.Host)
		p.publicHost = strings.ToLower(u.Hostname())
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		h = strings.ToLower(h)
		short, _, _ := strings.Cut(h, ".")
		p.hostnames = []string{h, short, short + ".local"}
	}
	return p, nil
}

// ParsePublicURL parses http.public_url: an http or https URL of only
// scheme://host[:port], such as https://iot.example.com.
func ParsePublicURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q must start with https:// or http://", s)
	}
	if u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("%q must be only scheme://host[:port], such as https://iot.example.com", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q has a bad port", s)
		}
	}
	u.Path = ""
	return u, nil
}

// Refusal says why an upgrade was refused and what would allow it.
type Refusal struct {
	Reason  string // metric label
	Setting string // the configuration key that would allow it
	Msg     string // for the client and the log
	Own     string // the request's own origin as the server saw it
}

// Check returns nil when r may upgrade; secure says whether the listener
// is HTTPS.
func (p *OriginPolicy) Check(r *http.Request, secure bool) *Refusal {
	raw := r.Header.Get("Origin")
	if raw == "" {
		return nil // not a browser
	}
	u, err := url.Parse(raw)
	origin, ok := "", false
	if err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Path == "" {
		origin, ok = normalizeOrigin(u.Scheme, u.Host)
	}
	if !ok {
		return &Refusal{Reason: "origin", Setting: "http.allowed_origins",
			Msg: fmt.Sprintf("the Origin header %q is not a web origin", raw)}
	}
	if p.public != "" && sameHostPort(origin, p.public) {
		return nil
	}
	if p.allowedPattern(u) {
		return nil
	}
	scheme := "http"
	if secure || r.TLS != nil {
		scheme = "https"
	}
	host, forwarded := r.Host, false
	if s, ok := p.proxies.forwardedScheme(r); ok && (s == "http" || s == "https") {
		scheme, forwarded = s, true
	}
	if h := p.proxies.forwardedHost(r); h != "" {
		host, forwarded = h, true
	}
	own, ok := normalizeOrigin(scheme, host)
	if !ok || !sameHostPort(origin, own) {
		ref := &Refusal{Reason: "origin", Own: own,
			Setting: "http.public_url or http.allowed_origins",
			Msg:     fmt.Sprintf("the page's origin %s is not this server's origin %s", origin, own)}
		if p.public != "" {
			ref.Msg += " nor http.public_url " + p.public
		}
		if !forwarded && hasForwarding(r.Header) && !p.proxies.Trusts(r) {
			ref.Setting = "http.trusted_proxies"
			ref.Msg += " (the forwarding headers came from " + r.RemoteAddr + ", which is not in http.trusted_proxies)"
		}
		return ref
	}
	if forwarded && p.public == "" {
		return nil // the trusted proxy vouches for the name
	}
	if hn := hostOf(own); p.known(hn) {
		return nil
	}
	return &Refusal{Reason: "host", Own: own, Setting: "http.public_url or http.allowed_origins",
		Msg: fmt.Sprintf("this server is not known by the name in %s (refused against DNS rebinding)", own)}
}

// allowedPattern reports whether the origin matches http.allowed_origins,
// as coder/websocket matches OriginPatterns: a pattern with "://" against
// "scheme://host[:port]", any other against "host[:port]".
func (p *OriginPolicy) allowedPattern(u *url.URL) bool {
	for _, pat := range p.patterns {
		target := u.Host
		if strings.Contains(pat, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(pat), strings.ToLower(target)); err == nil && ok {
			return true
		}
	}
	return false
}

// known reports whether the server is known by host name h.
func (p *OriginPolicy) known(h string) bool {
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return true // an IP literal is no name to rebind
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if h == p.publicHost {
		return true
	}
	for _, n := range p.hostnames {
		if h == n {
			return true
		}
	}
	if p.names != nil {
		for _, n := range p.names() {
			n = strings.ToLower(n)
			if h == n {
				return true
			}
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				if _, parent, ok := strings.Cut(h, "."); ok && parent == rest {
					return true
				}
			}
		}
	}
	return false
}

// hasForwarding reports whether h carries any forwarding header.
func hasForwarding(h http.Header) bool {
	for _, k := range []string{"X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "Forwarded"} {
		if h.Get(k) != "" {
			return true
		}
	}
	return false
}

// normalizeOrigin returns "scheme://host[:port]" in lower case with a
// default port (80 for http, 443 for https) removed.
func normalizeOrigin(scheme, hostport string) (string, bool) {
	scheme = strings.ToLower(scheme)
	hostport = strings.ToLower(strings.TrimSpace(hostport))
	if hostport == "" || strings.ContainsAny(hostport, "/?#@ ") {
		return "", false
	}
	host, port := hostport, ""
	if hasPort(hostport) {
		h, p, err := net.SplitHostPort(hostport)
		if err != nil {
			return "", false
		}
		host, port = h, p
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.Contains(host, ":") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return "", false // only an IPv6 literal holds colons
		}
	}
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return "", false
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return scheme + "://" + host + ":" + port, true
	}
	return scheme + "://" + host, true
}

// sameHostPort reports whether two normalized origins have the same host
// and port, a missing port being the scheme's default. The scheme itself
// is not compared, as browsers' WebSocket libraries on the server side
// (gorilla, coder/websocket) do not: Python's paho-mqtt 1.x sends
// "Origin: https://host:port" on ws:// connections too.
func sameHostPort(a, b string) bool {
	ah, ap := hostPortOf(a)
	bh, bp := hostPortOf(b)
	return ah == bh && ap == bp
}

// hostPortOf is a normalized origin's host and port (the scheme's
// default when none is written).
func hostPortOf(origin string) (host, port string) {
	scheme, hp, _ := strings.Cut(origin, "://")
	if hasPort(hp) {
		host, port, _ = net.SplitHostPort(hp)
		return host, port
	}
	if scheme == "https" {
		return strings.Trim(hp, "[]"), "443"
	}
	return strings.Trim(hp, "[]"), "80"
}

// hostOf is the host name of a normalized origin, without brackets.
func hostOf(origin string) string {
	_, hp, _ := strings.Cut(origin, "://")
	if hasPort(hp) {
		h, _, _ := net.SplitHostPort(hp)
		return h
	}
	return strings.Trim(hp, "[]")
}
