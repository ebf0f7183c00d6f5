package listeners

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqttl "github.com/mochi-mqtt/server/v2/listeners"
)

// Transport names, which are also the listener ids.
const (
	TCPTransport = "tcp"
	TLSTransport = "tls"
	WSTransport  = "ws"
	WSSTransport = "wss"
)

// Stats are a listener's running totals, safe to read at any time.
type Stats struct {
	Accepted atomic.Int64 // connections handed to the engine
	Refused  atomic.Int64 // connections refused before the engine saw them
	Open     atomic.Int64 // connections open now
	BytesIn  atomic.Int64
	BytesOut atomic.Int64
}

// ErrClosed is returned for a connection that arrives after Close.
var ErrClosed = errors.New("listener closed")

// conns is the part every listener shares: the engine's establish callback,
// the set of live connections, and the closed flag.
type conns struct {
	id             string
	connectTimeout time.Duration
	maxPacketSize  uint32   // 0: no limit
	limits         *Limiter // nil: no connection limits
	log            *slog.Logger
	stats          Stats

	ready     chan struct{} // closed once Serve has given us establish
	establish mqttl.EstablishFn

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool
	live   map[net.Conn]struct{}
	wg     sync.WaitGroup // one per connection inside the engine

	// drained is set once CloseConns has returned: the engine is done
	// with every connection of this listener, and none can come.
	drained atomic.Bool
}

// closeClients is what the engine's Close hook does about this listener's
// clients: it asks the engine to disconnect them (closeClients), unless
// CloseConns has already ended them all. Then the engine's lookup is not
// made: mochi v2.7.9's Clients.GetByListener takes its read lock twice
// (through Len), which deadlocks against a Clients.Delete waiting between
// the two (a session expiring, a purge), and Server.Close hung on it
// (docs/upstream.md item 20). Broker.Shutdown calls CloseConns before
// Server.Close, so its Close never looks.
func (c *conns) closeClients(closeClients mqttl.CloseFn) {
	if !c.drained.Load() {
		closeClients(c.id)
	}
}

func newConns(id string, connectTimeout time.Duration, maxPacketSize uint32) *conns {
	return &conns{
		id:             id,
		connectTimeout: connectTimeout,
		maxPacketSize:  maxPacketSize,
		log:            slog.Default(),
		ready:          make(chan struct{}),
		live:           map[net.Conn]struct{}{},
	}
}

// waitReady waits until the engine has called Serve, or done is closed.
func (c *conns) waitReady(done <-chan struct{}) bool {
	select {
	case <-c.ready:
		return true
	case <-done:
		return false
	}
}

// serve records the engine's callback; the engine calls it once.
func (c *conns) serve(establish mqttl.EstablishFn) {
	c.mu.Lock()
	if c.establish == nil {
		c.establish = establish
		close(c.ready)
	}
	c.mu.Unlock()
}

// hand gives conn to the engine and blocks until the engine is done with
// it. A connection that arrives after stop, or before the engine started
// serving, is closed at once.
//
// hand's own frame stays small: it is on the stack of the engine's
// reading goroutine for the connection's whole life, and an idle
// goroutine's stack is shrunk only while it uses under a quarter of it
// (TestMeasureIdleMemory).
func (c *conns) hand(conn net.Conn) error {
	ec, done, err := c.admit(conn)
	if err != nil {
		return err
	}
	err = c.establish(c.id, ec)
	done(ec, err)
	return err
}

// admit checks and registers conn, and returns the connection to give
// the engine and what to call when the engine is done with it.
func (c *conns) admit(conn net.Conn) (net.Conn, func(net.Conn, error), error) {
	select {
	case <-c.ready:
	default:
		c.stats.Refused.Add(1)
		conn.Close()
		return nil, nil, errors.New("listener not serving yet")
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.stats.Refused.Add(1)
		conn.Close()
		return nil, nil, ErrClosed
	}
	release, ok := c.limits.admit(conn.RemoteAddr())
	var answered func()
	if ok {
		if answered, ok = c.limits.admitPending(conn.RemoteAddr()); !ok {
			release()
		}
	}
	if !ok {
		c.mu.Unlock()
		c.stats.Refused.Add(1)
		c.log.Debug("mqtt connection refused by a connection limit", "transport", c.id, "remote", conn.RemoteAddr().String())
		conn.Close()
		return nil, nil, ErrLimited
	}
	cc := &countingConn{Conn: conn, stats: &c.stats}
	c.live[cc] = struct{}{}
	// Added under mu, so that once stop has set closed no Add can follow
	// the Wait in wait (a sync.WaitGroup must not Add during Wait).
	c.wg.Add(1)
	c.mu.Unlock()
	c.stats.Accepted.Add(1)
	c.stats.Open.Add(1)
	// The packet size limit, and the guard against packets the engine
	// would crash on (guard.go), whatever the limit.
	lc := &limitConn{Conn: newAckConn(cc), max: c.maxPacketSize}
	lc.answered.Store(&answered) // until the broker's first packet, the CONNACK
	var ec net.Conn = lc
	// [MQTT-3.1.4] The server may close a connection that sends no CONNECT
	// within a reasonable time: the engine replaces this deadline with the
	// keep-alive one once CONNECT is read.
	if c.connectTimeout > 0 {
		_ = ec.SetDeadline(time.Now().Add(c.connectTimeout))
	}
	done := func(ec net.Conn, err error) {
		if f := ec.(*limitConn).engineDone.Swap(nil); f != nil {
			(*f)(err)
		}
		if f := ec.(*limitConn).answered.Swap(nil); f != nil {
			(*f)()
		}
		_ = ec.Close()
		c.log.Debug("mqtt connection ended", "transport", c.id, "remote", conn.RemoteAddr().String(), "error", err)
		c.mu.Lock()
		delete(c.live, cc)
		c.mu.Unlock()
		c.stats.Open.Add(-1)
		c.wg.Done()
		release()
	}
	return ec, done, nil
}

// OnEngineDone sets f to run once the engine is done with conn, a
// connection these listeners gave it (EstablishConnection has returned,
// with err), before conn is closed and no longer counted open; nil
// clears it. It reports whether conn is one of theirs. The engine skips
// its hooks' OnDisconnect for a client it has listed when it fails to
// write the CONNACK (docs/upstream.md): the broker catches that here.
func OnEngineDone(conn net.Conn, f func(err error)) bool {
	lc, ok := conn.(*limitConn)
	if !ok {
		return false
	}
	if f == nil {
		lc.engineDone.Store(nil)
	} else {
		lc.engineDone.Store(&f)
	}
	return true
}

// stop refuses further connections. It is idempotent.
func (c *conns) stop() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// closeAll closes every live connection; the engine then sees them end.
func (c *conns) closeAll() {
	c.mu.Lock()
	list := make([]net.Conn, 0, len(c.live))
	for conn := range c.live {
		list = append(list, conn)
	}
	c.mu.Unlock()
	for _, conn := range list {
		_ = conn.Close()
	}
}

// wait blocks until every connection handed to the engine has ended.
// Call it only after stop.
func (c *conns) wait() { c.wg.Wait() }

// countingConn counts bytes for its listener's Stats.
type countingConn struct {
	net.Conn
	stats *Stats
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.stats.BytesIn.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.stats.BytesOut.Add(int64(n))
	return n, err
}
