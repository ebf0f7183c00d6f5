package forwarded

import (
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestOriginPolicy(t *testing.T) {
	proxies := mustProxies(t, "127.0.0.1")
	hostname, _ := os.Hostname()
	type req struct {
		remote, host, origin string
		headers              []string
		secure               bool
	}
	tests := []struct {
		name   string
		opts   OriginOptions
		req    req
		reason string // "" = allowed
	}{
		{"no Origin (not a browser)", OriginOptions{}, req{host: "evil.example"}, ""},
		{"localhost", OriginOptions{}, req{host: "localhost:8080", origin: "http://localhost:8080"}, ""},
		{"loopback IP", OriginOptions{}, req{host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080"}, ""},
		{"IPv6 literal", OriginOptions{}, req{host: "[::1]:8080", origin: "http://[::1]:8080"}, ""},
		{"LAN IP", OriginOptions{}, req{host: "192.168.1.20:8080", origin: "http://192.168.1.20:8080"}, ""},
		{"machine's name", OriginOptions{}, req{host: strings.ToLower(hostname) + ":8080", origin: "http://" + hostname + ":8080"}, ""},
		{"DNS rebinding", OriginOptions{}, req{host: "evil.example:8080", origin: "http://evil.example:8080"}, "host"},
		{"DNS rebinding, public_url set", OriginOptions{PublicURL: "https://iot.example.com"},
			req{host: "evil.example", origin: "http://evil.example"}, "host"},
		{"certificate name", OriginOptions{Names: func() []string { return []string{"iot.example.com"} }},
			req{host: "iot.example.com:8443", origin: "https://iot.example.com:8443", secure: true}, ""},
		{"certificate wildcard", OriginOptions{Names: func() []string { return []string{"*.example.com"} }},
			req{host: "iot.example.com", origin: "https://iot.example.com", secure: true}, ""},
		{"wildcard is one label", OriginOptions{Names: func() []string { return []string{"*.example.com"} }},
			req{host: "a.b.example.com", origin: "https://a.b.example.com", secure: true}, "host"},
		{"foreign origin", OriginOptions{}, req{host: "127.0.0.1:8080", origin: "https://evil.example"}, "origin"},
		{"paho-mqtt 1.x: https:// Origin on ws://", OriginOptions{}, req{host: "127.0.0.1:8080", origin: "https://127.0.0.1:8080"}, ""},
		{"port differs", OriginOptions{}, req{host: "127.0.0.1:8080", origin: "http://127.0.0.1:8081"}, "origin"},
		{"default port of the other scheme", OriginOptions{}, req{host: "127.0.0.1", origin: "https://127.0.0.1"}, "origin"},
		{"explicit default port of the other scheme", OriginOptions{}, req{host: "127.0.0.1", origin: "https://127.0.0.1:80"}, ""},
		{"Origin null", OriginOptions{}, req{host: "127.0.0.1", origin: "null"}, "origin"},
		{"Origin with a path", OriginOptions{}, req{host: "127.0.0.1", origin: "http://127.0.0.1/x"}, "origin"},
		{"default port equals none", OriginOptions{}, req{host: "127.0.0.1:443", origin: "https://127.0.0.1", secure: true}, ""},
		{"allowed_origins host", OriginOptions{AllowedOrigins: []string{"app.example.com"}},
			req{host: "127.0.0.1", origin: "https://app.example.com"}, ""},
		{"allowed_origins wildcard", OriginOptions{AllowedOrigins: []string{"*.fleet.example"}},
			req{host: "127.0.0.1", origin: "https://bus.fleet.example"}, ""},
		{"allowed_origins with scheme", OriginOptions{AllowedOrigins: []string{"https://app.example.com"}},
			req{host: "127.0.0.1", origin: "http://app.example.com"}, "origin"},
		{"public_url", OriginOptions{PublicURL: "https://iot.example.com"},
			req{host: "127.0.0.1:8080", origin: "https://iot.example.com"}, ""},
		{"public_url with default port", OriginOptions{PublicURL: "https://IoT.example.com:443/"},
			req{host: "backend:8080", origin: "https://iot.example.com"}, ""},
		{"public_url, local access still works", OriginOptions{PublicURL: "https://iot.example.com"},
			req{host: "localhost:8080", origin: "http://localhost:8080"}, ""},
		// Behind nginx: "proxy_set_header Host $host" drops the port.
		{"nginx drops the port, X-Forwarded-Proto", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "iot.example.com", origin: "https://iot.example.com:443",
				headers: []string{"X-Forwarded-Proto", "https"}}, ""},
		{"nginx on a non-default port, X-Forwarded-Host", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "iot.example.com", origin: "https://iot.example.com:8443",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "iot.example.com:8443"}}, ""},
		{"X-Forwarded-Port", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "iot.example.com", origin: "https://iot.example.com:8443",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "iot.example.com", "X-Forwarded-Port", "8443"}}, ""},
		{"X-Forwarded-Port alone (AWS ALB)", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "iot.example.com", origin: "https://iot.example.com:8443",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Port", "8443"}}, ""},
		{"X-Forwarded-Port from an untrusted peer", OriginOptions{Proxies: proxies},
			req{remote: "203.0.113.9:5", host: "127.0.0.1", origin: "http://127.0.0.1:8443",
				headers: []string{"X-Forwarded-Port", "8443"}}, "origin"},
		{"Forwarded", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "backend:8080", origin: "https://iot.example.com",
				headers: []string{"Forwarded", `for=1.2.3.4;host=iot.example.com;proto=https`}}, ""},
		{"forwarding headers from an untrusted peer", OriginOptions{Proxies: proxies},
			req{remote: "203.0.113.9:5", host: "127.0.0.1:8080", origin: "https://evil.example",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.example"}}, "origin"},
		{"forwarded host must still match the Origin", OriginOptions{Proxies: proxies},
			req{remote: "127.0.0.1:5", host: "backend", origin: "https://evil.example",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "iot.example.com"}}, "origin"},
		{"public_url pins the name behind a proxy", OriginOptions{Proxies: proxies, PublicURL: "https://iot.example.com"},
			req{remote: "127.0.0.1:5", host: "backend", origin: "https://evil.example",
				headers: []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.example"}}, "host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewOriginPolicy(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/mqtt", nil)
			r.Host = tt.req.host
			if tt.req.remote != "" {
				r.RemoteAddr = tt.req.remote
			}
			if tt.req.origin != "" {
				r.Header.Set("Origin", tt.req.origin)
			}
			for i := 0; i+1 < len(tt.req.headers); i += 2 {
				r.Header.Add(tt.req.headers[i], tt.req.headers[i+1])
			}
			ref := p.Check(r, tt.req.secure)
			switch {
			case tt.reason == "" && ref != nil:
				t.Fatalf("refused (%s): %s", ref.Reason, ref.Msg)
			case tt.reason != "" && ref == nil:
				t.Fatalf("allowed, want refused for %s", tt.reason)
			case ref != nil && ref.Reason != tt.reason:
				t.Fatalf("refused for %s (%s), want %s", ref.Reason, ref.Msg, tt.reason)
			case ref != nil && !strings.Contains(ref.Msg+ref.Setting, "http."):
				t.Fatalf("refusal %q names no setting", ref.Msg)
			}
		})
	}
}

func TestOriginUntrustedForwardingNamesTheSetting(t *testing.T) {
	p, _ := NewOriginPolicy(OriginOptions{})
	r := httptest.NewRequest("GET", "/mqtt", nil)
	r.Host = "backend:8080"
	r.RemoteAddr = "127.0.0.1:9"
	r.Header.Set("Origin", "https://iot.example.com")
	r.Header.Set("X-Forwarded-Host", "iot.example.com")
	ref := p.Check(r, false)
	if ref == nil || ref.Setting != "http.trusted_proxies" {
		t.Fatalf("refusal %+v, want one naming http.trusted_proxies", ref)
	}
}

func TestNormalizeOrigin(t *testing.T) {
	for _, tt := range []struct{ scheme, host, want string }{
		{"http", "Example.COM:80", "http://example.com"},
		{"https", "example.com:443", "https://example.com"},
		{"http", "example.com:443", "http://example.com:443"},
		{"https", "[::1]:443", "https://[::1]"},
		{"http", "[::1]:8080", "http://[::1]:8080"},
		{"http", "example.com.", "http://example.com"},
	} {
		if got, ok := normalizeOrigin(tt.scheme, tt.host); !ok || got != tt.want {
			t.Errorf("%s %s: %q %v, want %q", tt.scheme, tt.host, got, ok, tt.want)
		}
	}
	for _, bad := range []string{"", "a b", "x@y", "host:port:x"} {
		if got, ok := normalizeOrigin("http", bad); ok {
			t.Errorf("%q accepted as %q", bad, got)
		}
	}
}
