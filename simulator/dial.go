package simulator

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

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
// itself instead of leaving it to paho so that every transport goes
// through one timeout, WebSocket through the simulator's own lean client
// (wsConn), and so that the simulator can drop a connection abruptly
// (churn) by closing it.
type dialer struct {
	ep      Endpoint
	tls     *tls.Config // nil for tcp and ws
	caFile  string      // TLSOptions.CAFile, for explanations
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
	return d, nil
}

// dial opens one connection to the broker.
func (d *dialer) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	switch d.ep.Transport {
	case TransportTCP:
		var nd net.Dialer
		conn, err := nd.DialContext(ctx, "tcp", d.ep.Host)
		if err != nil {
			return nil, err
		}
		return readBuffered(conn), nil
	case TransportTLS:
		return d.dialTLS(ctx, d.ep.Host)
	case TransportWS, TransportWSS:
		var conn net.Conn
		var err error
		if d.ep.Transport == TransportWSS {
			conn, err = d.dialTLS(ctx, d.ep.Host)
		} else {
			var nd net.Dialer
			conn, err = nd.DialContext(ctx, "tcp", d.ep.Host)
		}
		if err != nil {
			return nil, err
		}
		ws, err := wsUpgrade(ctx, conn, d.ep.Host, d.ep.Path)
		if err != nil {
			conn.Close()
			return nil, err
		}
		// MQTT packets span messages; limitPackets bounds them (openFn).
		return ws, nil
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
		conn = limitPackets(&closedConn{Conn: conn}, MaxBrokerPacket)
		if track != nil {
			track(conn)
		}
		return conn, nil
	}
}

// tcpClientReadBuffer holds a burst of small packets (a subscriber's
// QoS 0 stream, a publisher's acknowledgements) for one read of the
// socket. paho reads a packet's first byte, its length a byte at a time
// and then its body: three reads, each a system call on a bare TCP
// connection, where TLS and the WebSocket client (wsClientReadBuffer)
// read ahead. Small, because `tether sim` holds one per device.
const tcpClientReadBuffer = 2 << 10

// bufferedConn reads its connection through a buffer.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func readBuffered(c net.Conn) net.Conn {
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, tcpClientReadBuffer)}
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// errClosed is what a read returns once the connection was closed here
// (by the simulator's churn or reboot, or by paho): it wraps
// net.ErrClosed, but its text is not net.ErrClosed's. paho (v1.5.1,
// startIncoming) takes a read error whose text holds "use of closed
// network connection" for a close of its own and stops reading without
// reporting the loss: a connection the simulator dropped stayed
// "connected", and its device waited out awaitLost's 10 s, until paho
// was told to disconnect. A close paho makes itself (Disconnect) is
// reported too, and paho ignores it (it is disconnecting).
var errClosed error = closedError{}

type closedError struct{}

func (closedError) Error() string { return "connection closed" }
func (closedError) Unwrap() error { return net.ErrClosed }

// closedConn reads as its connection does, but a read that fails because
// the connection was closed fails with errClosed.
type closedConn struct {
	net.Conn
}

func (c *closedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && errors.Is(err, net.ErrClosed) {
		err = errClosed
	}
	return n, err
}
