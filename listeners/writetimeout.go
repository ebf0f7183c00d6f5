package listeners

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// The engine (mochi-mqtt v2.7.9) writes a packet to a client's socket
// holding that client's lock, which routing a QoS 1/2 message to the
// client takes too (Client.NextPacketID). A client that stops reading
// its socket, once the kernel's buffers are full, blocks that write, and
// so every publisher of a message it subscribes to at QoS 1/2: with
// keep-alive 0 (no deadline from the engine), for good. One viewer
// subscribing to devices/# at QoS 1 and reading nothing stopped the QoS
// 1/2 traffic of the whole fleet (docs/upstream.md item 24).
//
// writeTimeoutConn closes that window: a write that makes no progress
// for the write timeout fails, the engine drops the client, and its
// publishers go on. It wraps the raw socket, under TLS and WebSocket, so
// that a write that does make progress (a large packet on a slow link) is
// simply resumed with a fresh deadline.

// writeTimeoutConn bounds the time a write to the socket may make no
// progress. A deadline set by the caller (SetDeadline, SetWriteDeadline:
// the engine's keep-alive, the broker's bound on a last packet) is kept
// when it is earlier.
type writeTimeoutConn struct {
	net.Conn
	timeout time.Duration

	// mu guards the fields below.
	mu       sync.Mutex
	explicit time.Time // the caller's write deadline; zero: none
	armed    time.Time // the write deadline set on Conn
}

// WithWriteTimeout returns conn with writes bounded by timeout (see
// writeTimeoutConn); timeout 0 returns conn as it is.
func WithWriteTimeout(conn net.Conn, timeout time.Duration) net.Conn {
	if timeout <= 0 {
		return conn
	}
	return &writeTimeoutConn{Conn: conn, timeout: timeout}
}

// WriteTimeoutListener wraps each connection ln accepts with
// WithWriteTimeout: for the HTTP listeners, whose hijacked connections
// carry MQTT over WebSocket, and whose responses a client that reads
// nothing would otherwise hold for good.
func WriteTimeoutListener(ln net.Listener, timeout time.Duration) net.Listener {
	if timeout <= 0 {
		return ln
	}
	return &writeTimeoutListener{Listener: ln, timeout: timeout}
}

type writeTimeoutListener struct {
	net.Listener
	timeout time.Duration
}

func (l *writeTimeoutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return WithWriteTimeout(c, l.timeout), nil
}

// Write writes p; each time the deadline passes with some of it written,
// it goes on with a fresh one. The deadline is renewed only once less
// than half the timeout is left, so a write that makes no progress fails
// after between half the timeout and all of it, and closes the
// connection.
func (c *writeTimeoutConn) Write(p []byte) (int, error) {
	var n int
	for {
		c.arm(false)
		k, err := c.Conn.Write(p[n:])
		n += k
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		if k == 0 || c.callerExpired() {
			// The engine goes on writing after a failed write (its writer
			// logs the error and takes the next packet, each waiting out
			// the timeout again): closing ends the client at once, its
			// reader failing too.
			_ = c.Conn.Close()
			return n, err
		}
		c.arm(true) // progress: another round
	}
}

// WriteBuffers writes v as Write writes a slice, and in one writev when
// the connection underneath can (see buffersWriter): net.Buffers writes
// through a wrapper one buffer at a time, so a WebSocket message over
// wsMaxCopiedMessage (header and payload) took two writes.
func (c *writeTimeoutConn) WriteBuffers(v *net.Buffers) (int64, error) {
	var n int64
	for {
		c.arm(false)
		k, err := writeBuffers(c.Conn, v)
		n += k
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		if k == 0 || c.callerExpired() {
			_ = c.Conn.Close() // as Write
			return n, err
		}
		c.arm(true)
	}
}

// buffersWriter is a connection wrapper that writes a net.Buffers whole,
// through the wrapped connection's own (one writev on a *net.TCPConn):
// net.Buffers.WriteTo uses writev only on the net package's connections,
// and writes through anything else one buffer at a time. Each wrapper of
// a connection that carries WebSocket implements it (writeTimeoutConn,
// pendingConn), by WriteBuffers on what it wraps.
type buffersWriter interface {
	// WriteBuffers writes v, consuming it as net.Buffers.WriteTo does.
	WriteBuffers(v *net.Buffers) (int64, error)
}

// writeBuffers writes v to c: through c's WriteBuffers if it has one,
// else with v.WriteTo (writev on the net package's connections).
func writeBuffers(c net.Conn, v *net.Buffers) (int64, error) {
	if bw, ok := c.(buffersWriter); ok {
		return bw.WriteBuffers(v)
	}
	return v.WriteTo(c)
}

// arm sets the write deadline to the timeout from now (or the caller's,
// if earlier) when less than half the timeout is left, or always if force.
func (c *writeTimeoutConn) arm(force bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !force && c.armed.Sub(now) >= c.timeout/2 {
		return
	}
	d := now.Add(c.timeout)
	if !c.explicit.IsZero() && c.explicit.Before(d) {
		d = c.explicit
	}
	if d.Equal(c.armed) {
		return
	}
	c.armed = d
	_ = c.Conn.SetWriteDeadline(d)
}

// callerExpired reports whether the caller's own write deadline has passed.
func (c *writeTimeoutConn) callerExpired() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.explicit.IsZero() && !time.Now().Before(c.explicit)
}

// NetConn is the connection underneath (as tls.Conn's).
func (c *writeTimeoutConn) NetConn() net.Conn { return c.Conn }

// SetWriteDeadline sets the caller's write deadline; the timeout still
// applies when it is later (or zero).
func (c *writeTimeoutConn) SetWriteDeadline(t time.Time) error {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.explicit = t
	d := now.Add(c.timeout)
	if !t.IsZero() && t.Before(d) {
		d = t
	} else if c.armed.Sub(now) >= c.timeout/2 {
		// The timeout's own deadline, still far enough off: Write would
		// leave it too. (The engine sets its keep-alive deadline at every
		// packet it reads; this spares most of them a second call.)
		return nil
	}
	c.armed = d
	return c.Conn.SetWriteDeadline(d)
}

// SetDeadline sets the read deadline, and the write deadline as
// SetWriteDeadline does.
func (c *writeTimeoutConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
