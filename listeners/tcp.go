package listeners

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqttl "github.com/mochi-mqtt/server/v2/listeners"

	"github.com/tether-iot/tether/internal/addrkey"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// TCP serves MQTT over TCP, or over TLS when given a tls.Config.
// It implements the engine's listeners.Listener.
type TCP struct {
	*conns
	addr     string
	tls      *tls.Config
	proxyHdr *forwarded.Proxies
	wtimeout time.Duration // writes making no progress this long fail; 0: none

	// lmu guards the fields below.
	lmu     sync.Mutex
	ln      net.Listener
	stopped bool
	wg      sync.WaitGroup // the accept loop; Add only under lmu and before stopped
}

// TCPOptions configures a TCP or TLS listener. A nil *TCPOptions means
// defaults: plain TCP, 10 s to send CONNECT.
type TCPOptions struct {
	// TLS, when set, makes this a TLS listener (transport "tls").
	TLS *tls.Config
	// ConnectTimeout bounds the time from accept to CONNECT (and, for TLS,
	// the handshake). 0 means 10 s; negative means none.
	ConnectTimeout time.Duration
	// MaxPacketSize is the largest MQTT packet accepted, in bytes; a larger
	// one disconnects its sender (with DISCONNECT 0x95 for MQTT 5). 0 means
	// no limit.
	MaxPacketSize uint32
	// Limits admits or refuses each new connection (see Limiter); nil
	// means no limits. Share one Limiter among a broker's listeners.
	Limits *Limiter
	// ProxyProtocolFrom are the load balancers whose PROXY protocol
	// header (v1 or v2) is read (mqtt.proxy_protocol_from); nil: nobody's.
	ProxyProtocolFrom *forwarded.Proxies
	// WriteTimeout is how long a write to a client may make no progress
	// before it fails and the client is dropped (limits.write_timeout,
	// see writeTimeoutConn); 0 means none.
	WriteTimeout time.Duration
}

// NewTCP returns a listener for addr ("host:port"; port 0 picks one).
func NewTCP(addr string, opts *TCPOptions) *TCP {
	if opts == nil {
		opts = &TCPOptions{}
	}
	id := TCPTransport
	if opts.TLS != nil {
		id = TLSTransport
	}
	l := &TCP{conns: newConns(id, connectTimeout(opts.ConnectTimeout), opts.MaxPacketSize), addr: addr, tls: opts.TLS,
		proxyHdr: opts.ProxyProtocolFrom, wtimeout: opts.WriteTimeout}
	l.limits = opts.Limits
	return l
}

func connectTimeout(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return 10 * time.Second
	case d < 0:
		return 0
	}
	return d
}

// ID is the transport name, "tcp" or "tls".
func (l *TCP) ID() string { return l.id }

// Protocol is the transport name.
func (l *TCP) Protocol() string { return l.id }

// Address is the bound address once Init has run.
func (l *TCP) Address() string {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Stats returns the listener's running totals.
func (l *TCP) Stats() *Stats { return &l.stats }

// Init binds the address. An error here (port in use, permission) stops
// start-up with the reason.
func (l *TCP) Init(log *slog.Logger) error {
	if log != nil {
		l.log = log
	}
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("listen %s on %s: %w", l.id, l.addr, err)
	}
	l.lmu.Lock()
	l.ln = ln
	l.lmu.Unlock()
	return nil
}

// Serve accepts connections until Stop.
func (l *TCP) Serve(establish mqttl.EstablishFn) {
	l.serve(establish)
	l.lmu.Lock()
	if l.stopped || l.ln == nil {
		l.lmu.Unlock()
		return
	}
	// Added under lmu before stopped is set, so Stop's Wait cannot race it.
	l.wg.Add(1)
	ln := l.ln
	l.lmu.Unlock()
	defer l.wg.Done()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ECONNABORTED and friends: the socket is
			// still good, so wait a little and go on, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt accept failed: retrying", "transport", l.id, "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go l.accept(conn)
	}
}

// accept reads a PROXY protocol header from a trusted load balancer,
// starts TLS on a TLS listener (the handshake runs on the engine's first
// read, within the connect timeout), and hands the connection on.
func (l *TCP) accept(conn net.Conn) {
	conn = WithWriteTimeout(conn, l.wtimeout) // the raw socket, under PROXY and TLS
	if !l.proxyHdr.Empty() {
		if a, ok := addrkey.Addr(conn.RemoteAddr().String()); ok && l.proxyHdr.Contains(a) {
			if l.connectTimeout > 0 {
				_ = conn.SetReadDeadline(time.Now().Add(l.connectTimeout))
			}
			br := bufio.NewReader(conn)
			src, present, err := readProxyHeader(br)
			_ = conn.SetReadDeadline(time.Time{})
			if err != nil {
				l.stats.Refused.Add(1)
				l.log.Debug("mqtt connection refused: PROXY protocol header", "transport", l.id,
					"remote", conn.RemoteAddr().String(), "error", err)
				conn.Close()
				return
			}
			pc := &proxiedConn{Conn: conn, r: br, remote: conn.RemoteAddr()}
			if present && src != nil {
				pc.remote = src
			}
			conn = pc
		}
	}
	if l.tls != nil {
		conn = tls.Server(conn, l.tls)
	}
	_ = l.hand(conn)
}

// Stop refuses new connections and closes the socket; live connections go
// on until CloseConns or the engine ends them. Idempotent.
func (l *TCP) Stop() {
	l.stop()
	l.lmu.Lock()
	l.stopped = true
	if l.ln != nil {
		_ = l.ln.Close()
	}
	l.lmu.Unlock()
	l.wg.Wait()
}

// CloseConns closes every live connection and waits for the engine to
// finish with them. Call after Stop.
func (l *TCP) CloseConns() {
	l.closeAll()
	l.wait()
	l.drained.Store(true)
}

// Close is the engine's hook: it stops the listener and asks the engine to
// disconnect this listener's clients (unless CloseConns has: see
// conns.closeClients).
func (l *TCP) Close(closeClients mqttl.CloseFn) {
	l.Stop()
	l.closeClients(closeClients)
}
