package simulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/coder/websocket"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/tlsexplain"
)

// TLSOptions configure tls and wss connections. The zero value verifies the
// broker against the system roots.
type TLSOptions struct {
	CAFile             string // PEM file of extra roots, e.g. from `tether certs dev`
	InsecureSkipVerify bool   // do not verify the broker's certificate (development only)
}

// config builds the client TLS configuration for serverName.
func (o TLSOptions) config(serverName string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.InsecureSkipVerify}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("load CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load CA file %s: no PEM certificates found", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// HTTPClient returns a client for a Tether API over https that trusts
// what the options trust (the broker and the API often share a
// certificate, e.g. from `tether certs dev`), or nil when they trust
// only the system roots.
func (o TLSOptions) HTTPClient(timeout time.Duration) (*http.Client, error) {
	if o.CAFile == "" && !o.InsecureSkipVerify {
		return nil, nil
	}
	cfg, err := o.config("")
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}

// dialer opens the network connection under each MQTT client. It does this
// itself instead of leaving it to paho so that every transport, WebSocket
// included, goes through coder/websocket and one timeout, and so that the
// simulator can drop a connection abruptly (churn) by closing it.
type dialer struct {
	ep      Endpoint
	tls     *tls.Config  // nil for tcp and ws
	caFile  string       // TLSOptions.CAFile, for explanations
	http    *http.Client // for ws and wss
	timeout time.Duration
}

// newDialer prepares connections to ep.
func newDialer(ep Endpoint, opts TLSOptions, timeout time.Duration) (*dialer, error) {
	d := &dialer{ep: ep, timeout: timeout, caFile: opts.CAFile}
	if ep.Transport == TransportTLS || ep.Transport == TransportWSS {
		cfg, err := opts.config(ep.Hostname())
		if err != nil {
			return nil, fmt.Errorf("new dialer: %w", err)
		}
		d.tls = cfg
	}
	if ep.Transport == TransportWS || ep.Transport == TransportWSS {
		d.http = &http.Client{Transport: &http.Transport{
			DialTLSContext:    func(ctx context.Context, _, addr string) (net.Conn, error) { return d.dialTLS(ctx, addr) },
			DisableKeepAlives: true,
		}}
	}
	return d, nil
}

// dial opens one connection to the broker.
func (d *dialer) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	switch d.ep.Transport {
	case TransportTCP:
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", d.ep.Host)
	case TransportTLS:
		return d.dialTLS(ctx, d.ep.Host)
	case TransportWS, TransportWSS:
		scheme := "http"
		if d.ep.Transport == TransportWSS {
			scheme = "https"
		}
		u := url.URL{Scheme: scheme, Host: d.ep.Host, Path: d.ep.Path}
		c, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
			HTTPClient:   d.http,
			Subprotocols: []string{"mqtt"},
		})
		if err != nil {
			if resp != nil {
				return nil, fmt.Errorf("websocket handshake: status %d: %w", resp.StatusCode, err)
			}
			return nil, fmt.Errorf("websocket handshake: %w", err)
		}
		if c.Subprotocol() != "mqtt" {
			c.Close(websocket.StatusProtocolError, "mqtt subprotocol required")
			return nil, fmt.Errorf("websocket handshake: broker did not accept subprotocol mqtt")
		}
		c.SetReadLimit(-1) // MQTT packets span messages; limitPackets bounds them (openFn).
		// The NetConn lives until it is closed, so it gets its own context.
		return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
	}
	return nil, fmt.Errorf("dial: unknown transport %q", d.ep.Transport)
}

// dialTLS opens a TCP connection to addr and completes the TLS handshake
// on it, explaining a handshake that fails as `tether doctor` does: a
// plain MQTT port closes the connection (bare "EOF"), a plain HTTP port
// answers in clear, a certificate is not trusted, names another host...
func (d *dialer) dialTLS(ctx context.Context, addr string) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(conn, d.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, tlsexplain.Handshake(err, d.tlsContext()))
	}
	return refusalConn{tc, addr, d.tlsContext()}, nil
}

// refusalConn explains a TLS 1.3 server's refusal for want of a client
// certificate: the client's handshake is over before the server reads
// the certificate, so the refusal ends the first read instead.
type refusalConn struct {
	*tls.Conn
	addr string
	tc   tlsexplain.Context
}

func (c refusalConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && tlsexplain.ClientCertificateWanted(err) {
		err = fmt.Errorf("tls handshake with %s: %w", c.addr, tlsexplain.Handshake(err, c.tc))
	}
	return n, err
}

// tlsContext is what tlsexplain may name: the flags are those of
// `tether sim` and `tether bench`.
func (d *dialer) tlsContext() tlsexplain.Context {
	return tlsexplain.Context{Transport: d.ep.Transport, Host: d.tls.ServerName, CAFile: d.caFile,
		CAFlag: "--ca", InsecureFlag: "--insecure-skip-verify"}
}

// openFn returns the paho hook that opens a connection and hands it to
// track (which may be nil) so the caller can close it abruptly. paho
// reads the connection through limitPackets: it has no bound of its own
// on the packets a broker sends.
func (d *dialer) openFn(track func(net.Conn)) mqtt.OpenConnectionFunc {
	return func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
		conn, err := d.dial(context.Background())
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", d.ep.URL(), err)
		}
		conn = limitPackets(conn, MaxBrokerPacket)
		if track != nil {
			track(conn)
		}
		return conn, nil
	}
}
