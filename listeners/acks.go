package listeners

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ackConn sends the acknowledgements the engine writes while it handles a
// burst of incoming packets in one write, when it next reads, instead of
// one write syscall per PUBACK (nats-server's read loop does the same: it
// handles a whole buffer of packets and flushes once at the end).
//
// The engine's reading goroutine writes each PUBACK, PUBREC, PUBREL and
// PUBCOMP as it handles the packet that called for it, and then goes on
// with the next packet of the buffer it has read; only when that buffer is
// used up does it call Read again. So an acknowledgement written while no
// Read is in progress is held, and sent:
//   - when Read is next called (the burst is handled), before it reads;
//   - with the next write of anything else (same order on the wire);
//   - when more than maxPendingAcks bytes are held;
//   - on Flush (a hook is about to make the reader wait) and on Close.
//
// An acknowledgement written while a Read is in progress (so not by the
// reader in the middle of a burst) is sent at once: nothing is ever held
// while the reader waits for input. Everything else is written through.
type ackConn struct {
	net.Conn

	reading atomic.Bool // a Read is in progress
	held    atomic.Bool // pending is not empty (set before reading is checked)

	mu      sync.Mutex
	pending []byte // held acknowledgements, in order
	err     error  // the error of a failed flush, returned by the next Read or Write
}

// maxPendingAcks bounds the held bytes: a few hundred acknowledgements.
const maxPendingAcks = 2048

func newAckConn(c net.Conn) *ackConn { return &ackConn{Conn: c} }

// isAck reports whether p is exactly one PUBACK, PUBREC, PUBREL or PUBCOMP
// packet (MQTT 3.1.1 or 5: at most a reason code and short properties).
func isAck(p []byte) bool {
	if len(p) < 2 || p[1] >= 0x80 || len(p) != 2+int(p[1]) {
		return false
	}
	switch p[0] {
	case 0x40, 0x50, 0x62, 0x70:
		return true
	}
	return false
}

func (c *ackConn) Read(p []byte) (int, error) {
	// reading is stored before held is loaded, and Write stores held
	// before it loads reading: one of the two sees the other, so an
	// acknowledgement is never left held while Read waits for input. Read
	// takes mu only when something is held, so it does not wait for a
	// write of something else that is blocked on a full socket.
	c.reading.Store(true)
	if c.held.Load() {
		if err := c.Flush(); err != nil {
			c.reading.Store(false)
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	c.reading.Store(false)
	return n, err
}

func (c *ackConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if isAck(p) && len(c.pending)+len(p) <= maxPendingAcks {
		c.pending = append(c.pending, p...)
		c.held.Store(true)
		if !c.reading.Load() {
			return len(p), nil // the reader flushes it when it reads next
		}
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(c.pending) == 0 {
		return c.Conn.Write(p)
	}
	c.pending = append(c.pending, p...)
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends the held acknowledgements now.
func (c *ackConn) Flush() error {
	if !c.held.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return c.flushLocked()
}

func (c *ackConn) flushLocked() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending)
	c.held.Store(false)
	if cap(c.pending) > 2*maxPendingAcks {
		c.pending = nil // an outsized write: do not keep its buffer
	} else {
		c.pending = c.pending[:0]
	}
	if err != nil {
		c.err = err
	}
	return err
}

// Close sends what is held (within a second), then closes. The deadline
// is set before the lock is taken: a write holding the lock, blocked on a
// client that reads nothing, would otherwise keep Close (the engine
// stopping the client, a take-over) waiting until it ends.
func (c *ackConn) Close() error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.mu.Lock()
	if len(c.pending) > 0 && c.err == nil {
		_ = c.flushLocked()
	}
	c.pending = nil
	c.mu.Unlock()
	return c.Conn.Close()
}

// FlushAcks sends the acknowledgements held on conn, a connection the
// listeners handed to the engine; a hook calls it before it makes the
// reading goroutine wait, so that the publisher is not kept waiting for
// the acknowledgements of the packets before.
func FlushAcks(conn net.Conn) {
	if f, ok := conn.(interface{ Flush() error }); ok {
		_ = f.Flush()
	}
}
