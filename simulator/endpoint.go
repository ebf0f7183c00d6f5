package simulator

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Transports a client can use to reach the broker.
const (
	TransportTCP = "tcp"
	TransportTLS = "tls"
	TransportWS  = "ws"
	TransportWSS = "wss"
)

// ErrRemote reports a broker that is not on a loopback address while remote
// brokers are not allowed.
var ErrRemote = errors.New("broker is not on a loopback address")

// Endpoint is a parsed broker address: how to reach it and where.
type Endpoint struct {
	Transport string // tcp, tls, ws or wss
	Host      string // host:port
	Path      string // HTTP path of the WebSocket endpoint; empty for tcp and tls
}

// defaultPorts are Tether's default listener ports per transport (SPEC §3).
var defaultPorts = map[string]string{
	TransportTCP: "1883",
	TransportTLS: "8883",
	TransportWS:  "8080",
	TransportWSS: "8443",
}

// schemes maps the URL schemes people write for MQTT brokers to transports.
var schemes = map[string]string{
	"tcp": TransportTCP, "mqtt": TransportTCP,
	"tls": TransportTLS, "ssl": TransportTLS, "mqtts": TransportTLS, "tcps": TransportTLS,
	"ws": TransportWS, "wss": TransportWSS,
}

// ParseEndpoint reads a broker address. raw is a URL such as
// tcp://127.0.0.1:1883 or ws://localhost:8080/mqtt, or a bare host[:port];
// it may be empty, meaning defaultHost (127.0.0.1 if that is empty too).
// transport may be empty, meaning the URL's scheme, or tcp for a bare host;
// a transport that contradicts the URL's scheme is an error. A missing port
// is Tether's default for the transport and a WebSocket path defaults to
// /mqtt.
func ParseEndpoint(raw, transport, defaultHost string) (Endpoint, error) {
	if transport != "" {
		if _, ok := defaultPorts[transport]; !ok {
			return Endpoint{}, fmt.Errorf("parse broker: unknown transport %q (want tcp, tls, ws or wss)", transport)
		}
	}
	var ep Endpoint
	var host, port string
	switch {
	case strings.Contains(raw, "://"):
		u, err := url.Parse(raw)
		if err != nil {
			return Endpoint{}, fmt.Errorf("parse broker %q: %w", raw, err)
		}
		t, ok := schemes[strings.ToLower(u.Scheme)]
		if !ok {
			return Endpoint{}, fmt.Errorf("parse broker %q: unknown scheme %q (want tcp, tls, ws or wss)", raw, u.Scheme)
		}
		if transport != "" && transport != t {
			return Endpoint{}, fmt.Errorf("parse broker %q: scheme %q contradicts transport %q", raw, u.Scheme, transport)
		}
		ep.Transport, ep.Path = t, u.Path
		host, port = u.Hostname(), u.Port()
	default:
		ep.Transport = transport
		if ep.Transport == "" {
			ep.Transport = TransportTCP
		}
		host = raw
		if h, p, err := net.SplitHostPort(raw); err == nil {
			host, port = h, p
		}
	}
	if host == "" {
		host = defaultHost
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = defaultPorts[ep.Transport]
	}
	ep.Host = net.JoinHostPort(host, port)
	switch ep.Transport {
	case TransportWS, TransportWSS:
		if ep.Path == "" {
			ep.Path = "/mqtt"
		}
	default:
		ep.Path = ""
	}
	return ep, nil
}

// URL returns the endpoint as a URL string, with the scheme paho knows.
func (e Endpoint) URL() string {
	scheme := e.Transport
	if scheme == TransportTLS {
		scheme = "ssl"
	}
	return scheme + "://" + e.Host + e.Path
}

// Hostname returns the host without the port.
func (e Endpoint) Hostname() string {
	h, _, err := net.SplitHostPort(e.Host)
	if err != nil {
		return e.Host
	}
	return h
}

// CheckLoopback returns an error wrapping ErrRemote unless the endpoint's
// host is localhost or a loopback IP address, or allowRemote is true. Names
// other than localhost are not resolved: they count as remote.
func (e Endpoint) CheckLoopback(allowRemote bool) error {
	if allowRemote || IsLoopbackHost(e.Hostname()) {
		return nil
	}
	return fmt.Errorf("check broker %s: %w (pass --allow-remote to load a remote broker)", e.Host, ErrRemote)
}

// IsLoopbackHost reports whether host is localhost or a loopback IP.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// BrokerFromServer derives a broker address from the API server URL, for
// when --broker is not given: the server's host for tcp and tls, and the
// server's own /mqtt endpoint for ws (http) and wss (https). It returns ""
// when server is empty or unparsable.
func BrokerFromServer(server, transport string) string {
	u, err := url.Parse(server)
	if server == "" || err != nil || u.Hostname() == "" {
		return ""
	}
	switch {
	case transport == TransportWS && u.Scheme == "http", transport == TransportWSS && u.Scheme == "https":
		return transport + "://" + u.Host + "/mqtt"
	case transport == TransportWS || transport == TransportWSS:
		return transport + "://" + u.Hostname()
	}
	return u.Hostname()
}
