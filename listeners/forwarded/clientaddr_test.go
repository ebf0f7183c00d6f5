package forwarded

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func mustProxies(t *testing.T, list ...string) *Proxies {
	t.Helper()
	p, err := ParseProxies(list)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientAddr(t *testing.T) {
	p := mustProxies(t, "10.0.0.0/8", "192.168.1.1", "::1")
	tests := []struct {
		name, remote string
		headers      []string // name, value, ...
		want         string
	}{
		{"direct", "203.0.113.5:1234", nil, "203.0.113.5"},
		{"untrusted peer: header ignored", "203.0.113.5:1234", []string{"X-Forwarded-For", "1.2.3.4"}, "203.0.113.5"},
		{"trusted peer", "10.1.2.3:1234", []string{"X-Forwarded-For", "1.2.3.4"}, "1.2.3.4"},
		{"spoofed left part skipped", "10.1.2.3:1234", []string{"X-Forwarded-For", "6.6.6.6, 1.2.3.4, 192.168.1.1"}, "1.2.3.4"},
		{"header twice", "10.1.2.3:1234", []string{"X-Forwarded-For", "6.6.6.6", "X-Forwarded-For", "1.2.3.4"}, "1.2.3.4"},
		{"no header", "10.1.2.3:1234", nil, "10.1.2.3"},
		{"garbage", "10.1.2.3:1234", []string{"X-Forwarded-For", "garbage"}, "10.1.2.3"},
		{"garbage after a trusted hop", "10.1.2.3:1234", []string{"X-Forwarded-For", "garbage, 10.9.9.9"}, "10.9.9.9"},
		{"all trusted", "10.1.2.3:1234", []string{"X-Forwarded-For", "10.7.7.7, 10.8.8.8"}, "10.7.7.7"},
		{"v6 peer", "[::1]:80", []string{"X-Forwarded-For", "2001:db8::7"}, "2001:db8::7"},
		{"v4 in v6", "[::ffff:10.1.2.3]:80", []string{"X-Forwarded-For", "::ffff:1.2.3.4"}, "1.2.3.4"},
		{"with port", "10.1.2.3:1", []string{"X-Forwarded-For", "1.2.3.4:5678"}, "1.2.3.4"},
		{"zone refused", "10.1.2.3:1", []string{"X-Forwarded-For", "fe80::1%eth0"}, "10.1.2.3"},
		{"Forwarded", "10.1.2.3:1", []string{"Forwarded", `for=192.0.2.60;proto=https;by=10.1.2.3`}, "192.0.2.60"},
		{"Forwarded v6 quoted", "10.1.2.3:1", []string{"Forwarded", `for="[2001:db8:cafe::17]:4711"`}, "2001:db8:cafe::17"},
		{"Forwarded chain", "10.1.2.3:1", []string{"Forwarded", `for=6.6.6.6, for=1.2.3.4;proto=https, for=10.5.5.5`}, "1.2.3.4"},
		{"Forwarded unknown", "10.1.2.3:1", []string{"Forwarded", `for=unknown`}, "10.1.2.3"},
		{"Forwarded malformed", "10.1.2.3:1", []string{"Forwarded", `for=1.2.3.4;for=5.6.7.8`}, "10.1.2.3"},
		{"X-Forwarded-For wins over Forwarded", "10.1.2.3:1", []string{"Forwarded", "for=6.6.6.6", "X-Forwarded-For", "1.2.3.4"}, "1.2.3.4"},
		{"Forwarded from an untrusted peer", "203.0.113.5:1", []string{"Forwarded", "for=1.2.3.4"}, "203.0.113.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for i := 0; i+1 < len(tt.headers); i += 2 {
				r.Header.Add(tt.headers[i], tt.headers[i+1])
			}
			if got := p.ClientIP(r); got != tt.want {
				t.Fatalf("ClientIP = %s, want %s", got, tt.want)
			}
		})
	}
	var none *Proxies
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.1.2.3:1"
	r.Header.Set("X-Forwarded-For", "1.2.3.4")
	if got := none.ClientIP(r); got != "10.1.2.3" {
		t.Fatalf("nil Proxies: %s", got)
	}
}

func TestOverTLS(t *testing.T) {
	p := mustProxies(t, "10.0.0.0/8")
	for _, tt := range []struct {
		remote, name, value string
		want                bool
	}{
		{"10.1.2.3:1", "X-Forwarded-Proto", "https", true},
		{"10.1.2.3:1", "X-Forwarded-Proto", "HTTPS", true},
		{"10.1.2.3:1", "X-Forwarded-Proto", "http", false},
		{"10.1.2.3:1", "Forwarded", "for=1.2.3.4;proto=https", true},
		{"203.0.113.5:1", "X-Forwarded-Proto", "https", false},
		{"203.0.113.5:1", "Forwarded", "proto=https", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		r.Header.Set(tt.name, tt.value)
		if got := p.OverTLS(r); got != tt.want {
			t.Errorf("%s %s: %s: %v, want %v", tt.remote, tt.name, tt.value, got, tt.want)
		}
	}
}

func TestParseProxies(t *testing.T) {
	if _, err := ParseProxies([]string{"10.0.0.0/8", "nonsense"}); err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Fatalf("error %v does not name the bad entry", err)
	}
	p := mustProxies(t, "127.0.0.1")
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "127.0.0.2:1"
	if p.Trusts(r) {
		t.Fatal("127.0.0.1 trusts 127.0.0.2")
	}
	r.RemoteAddr = "not an address"
	if p.Trusts(r) || p.ClientIP(r) != "not an address" {
		t.Fatal("a RemoteAddr that is no address")
	}
}

func FuzzForwarded(f *testing.F) {
	f.Add(`for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"`, "1.2.3.4, 10.0.0.1")
	f.Add(`for="\"`, "")
	f.Fuzz(func(t *testing.T, fwd, xff string) {
		p, _ := ParseProxies([]string{"10.0.0.0/8"})
		r := &http.Request{RemoteAddr: "10.0.0.1:1", Header: http.Header{"Forwarded": {fwd}, "X-Forwarded-Host": {fwd}}}
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		a := p.ClientAddr(r)
		if !a.IsValid() {
			t.Fatal("no address for a request with a peer address")
		}
		_ = p.forwardedHost(r)
		_, _ = p.forwardedScheme(r)
	})
}

func TestParseCIDROrIP(t *testing.T) {
	for _, tt := range []struct {
		in, contains string
		ok           bool
	}{
		{"10.0.0.0/8", "10.1.2.3", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"::1", "::1", true},
		{"fd00::/8", "fd12::1", true},
		{"nonsense", "", false},
		{"10.0.0.0/40", "", false},
	} {
		n, err := ParseCIDROrIP(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseCIDROrIP(%q) error %v", tt.in, err)
			continue
		}
		if tt.ok && !n.Contains(parseIP(tt.contains)) {
			t.Errorf("%s does not contain %s", n, tt.contains)
		}
	}
}

func parseIP(s string) []byte {
	n, _ := ParseCIDROrIP(s)
	return n.IP
}
