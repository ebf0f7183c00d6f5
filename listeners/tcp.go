package listeners

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	mqttl "github.com/mochi-mqtt/server/v2/listeners"
)

// TCP serves MQTT over TCP, or over TLS when given a tls.Config.
// It implements the engine's listeners.Listener.
type TCP struct {
	*conns
	addr string
	tls  *tls.Config

	// mu guards ln.
	mu sync.Mutex
	ln net.Listener
	wg sync.WaitGroup // the accept loop
}

// TCPOptions configures a TCP or TLS listener. A nil *TCPOptions means
// defaults: plain TCP, 10 s to send CONNECT.
type TCPOptions struct {
	// TLS, when set, makes this a TLS listener (transport "tls").
	TLS *tls.Config
	// ConnectTimeout bounds the time from accept to CONNECT (and, for TLS,
	// the handshake). 0 means 10 s; negative means none.
	ConnectTimeout time.Duration
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
	return &TCP{conns: newConns(id, connectTimeout(opts.ConnectTimeout)), addr: addr, tls: opts.TLS}
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
	l.mu.Lock()
	defer l.mu.Unlock()
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
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	return nil
}

// Serve accepts connections until Close.
func (l *TCP) Serve(establish mqttl.EstablishFn) {
	l.serve(establish)
	l.wg.Add(1)
	defer l.wg.Done()
	l.mu.Lock()
	ln := l.ln
	l.mu.Unlock()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// EMFILE and friends: wait a little, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return
		}
		backoff = 0
		go l.hand(conn)
	}
}

// Stop refuses new connections and closes the socket; live connections go
// on until CloseConns or the engine ends them. Idempotent.
func (l *TCP) Stop() {
	l.stop()
	l.mu.Lock()
	if l.ln != nil {
		_ = l.ln.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// CloseConns closes every live connection and waits for the engine to
// finish with them. Call after Stop.
func (l *TCP) CloseConns() {
	l.closeAll()
	l.wait()
}

// Close is the engine's hook: it stops the listener and asks the engine to
// disconnect this listener's clients.
func (l *TCP) Close(closeClients mqttl.CloseFn) {
	l.Stop()
	closeClients(l.id)
}
