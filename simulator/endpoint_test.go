package simulator

import (
	"errors"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		raw, transport, def string
		want                string // URL(); "" for an error
	}{
		{"", "", "", "tcp://127.0.0.1:1883"},
		{"", "ws", "", "ws://127.0.0.1:8080/mqtt"},
		{"", "wss", "example.com", "wss://example.com:8443/mqtt"},
		{"", "tls", "", "ssl://127.0.0.1:8883"},
		{"localhost", "", "", "tcp://localhost:1883"},
		{"127.0.0.1:1999", "", "", "tcp://127.0.0.1:1999"},
		{"[::1]:1999", "", "", "tcp://[::1]:1999"},
		{"mqtt://127.0.0.1", "", "", "tcp://127.0.0.1:1883"},
		{"mqtts://127.0.0.1", "tls", "", "ssl://127.0.0.1:8883"},
		{"ws://127.0.0.1:9000", "", "", "ws://127.0.0.1:9000/mqtt"},
		{"wss://h:1/custom", "", "", "wss://h:1/custom"},
		{"tcp://127.0.0.1/ignored", "", "", "tcp://127.0.0.1:1883"},
		{"ws://127.0.0.1", "tcp", "", ""},
		{"http://127.0.0.1", "", "", ""},
		{"", "quic", "", ""},
	}
	for _, tt := range tests {
		ep, err := ParseEndpoint(tt.raw, tt.transport, tt.def)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("ParseEndpoint(%q, %q): no error", tt.raw, tt.transport)
		case tt.want != "" && (err != nil || ep.URL() != tt.want):
			t.Errorf("ParseEndpoint(%q, %q) = %s, %v; want %s", tt.raw, tt.transport, ep.URL(), err, tt.want)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	for raw, local := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3:99": true, "[::1]:1883": true, "localhost": true, "LOCALHOST": true,
		"10.0.0.1": false, "example.com": false, "[2001:db8::1]:1883": false, "0.0.0.0": false,
	} {
		ep, err := ParseEndpoint(raw, "", "")
		if err != nil {
			t.Fatal(err)
		}
		err = ep.CheckLoopback(false)
		if local != (err == nil) || (!local && !errors.Is(err, ErrRemote)) {
			t.Errorf("%s: CheckLoopback = %v", raw, err)
		}
		if err := ep.CheckLoopback(true); err != nil {
			t.Errorf("%s: allowed remote still refused: %v", raw, err)
		}
	}
}

func TestBrokerFromServer(t *testing.T) {
	for _, c := range []struct{ server, transport, want string }{
		{"", "tcp", ""},
		{"http://127.0.0.1:8080", "", "127.0.0.1"},
		{"http://127.0.0.1:8080", "ws", "ws://127.0.0.1:8080/mqtt"},
		{"https://localhost:8443", "wss", "wss://localhost:8443/mqtt"},
		{"http://localhost:8080", "wss", "wss://localhost"},
	} {
		if got := BrokerFromServer(c.server, c.transport); got != c.want {
			t.Errorf("BrokerFromServer(%q, %q) = %q, want %q", c.server, c.transport, got, c.want)
		}
	}
}
