package sessions

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// opKind names one change to the session store.
type opKind int

const (
	opClientPut opKind = iota
	opClientDelete
	opSubPut
	opSubDelete
	opInflightPut
	opInflightDelete
	opRetainedPut
	opRetainedDelete
	opQueuePut
	opQueueDelete
	opQueueClear
	opSysInfo
	opReset
	numOpKinds
)

// op is one change, applied with storeSQL[kind] and args. Every op is
// idempotent (an upsert or a delete by key), so applying one twice, as a
// resynchronisation may, does no harm.
type op struct {
	kind opKind
	args []any
	size int // bytes it holds, for the queue's memory bound
}

func newOp(kind opKind, args ...any) op {
	n := 64
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			n += len(v)
		case string:
			n += len(v)
		}
	}
	return op{kind: kind, args: args, size: n}
}

// batch is the set of ops that one transaction commits. done is closed
// when that transaction has committed, or has failed once (err set): a
// publisher waits on it before its acknowledgement leaves, but never waits
// on a failing store.
type batch struct {
	done chan struct{}
	err  error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// writer owns the store's one goroutine that writes to SQLite. It takes
// every op queued since its last transaction into the next one (group
// commit). While SQLite fails it retries with backoff, keeping what is
// queued up to maxBytes; beyond that it drops the queue and, once SQLite
// works again, rewrites the whole store from the engine's memory
// (resync), so memory stays bounded and the store ends up right.
type writer struct {
	db       *sql.DB
	log      *slog.Logger
	maxBytes int
	timeout  time.Duration        // each transaction's bound
	snapshot func() []op          // the engine's state as ops, for a resync
	sql      [numOpKinds][]string // each op's statements (storeSQL, or pgStoreSQL)
	metrics  *storeMetrics

	wake chan struct{} // buffered 1: something was queued or stop asked
	quit chan struct{} // closed by stop
	done chan struct{} // closed when run returns

	// mu guards the fields below.
	mu       sync.Mutex
	queue    []op
	bytes    int
	open     *batch // the batch that ops queued now will commit in
	gen      uint64 // bumped whenever the queue is dropped
	overflow bool   // the queue was dropped: resync before anything else
	stopped  bool
	stopAt   time.Time

	stopOnce sync.Once
	failing  atomic.Pointer[error] // the last transaction's error; nil when it worked
	stmts    [numOpKinds][]*sql.Stmt
}

func newWriter(db *sql.DB, log *slog.Logger, maxBytes int, timeout time.Duration, m *storeMetrics) *writer {
	return &writer{
		db: db, log: log, maxBytes: maxBytes, timeout: timeout, metrics: m,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		open: newBatch(), sql: storeSQL,
	}
}

// prepare prepares every statement on the writer's connection.
func (w *writer) prepare(ctx context.Context) error {
	for k, list := range w.sql {
		for _, q := range list {
			s, err := w.db.PrepareContext(ctx, q)
			if err != nil {
				w.closeStmts()
				return fmt.Errorf("prepare session store statements: %w", err)
			}
			w.stmts[k] = append(w.stmts[k], s)
		}
	}
	return nil
}

func (w *writer) closeStmts() {
	for k := range w.stmts {
		for _, s := range w.stmts[k] {
			_ = s.Close()
		}
		w.stmts[k] = nil
	}
}

// enqueue queues ops to be written together and returns the batch that
// will commit them, or nil when they were dropped (store stopped, or over
// its memory bound).
func (w *writer) enqueue(ops ...op) *batch {
	n := 0
	for _, o := range ops {
		n += o.size
	}
	w.mu.Lock()
	if w.stopped || w.overflow {
		w.mu.Unlock()
		w.metrics.dropped.Add(float64(len(ops)))
		return nil
	}
	if w.bytes+n > w.maxBytes {
		// Over the bound: forget the queue, release whoever waits on it,
		// and rebuild the store from memory once SQLite works again.
		w.metrics.dropped.Add(float64(len(w.queue) + len(ops)))
		w.queue, w.bytes, w.overflow = nil, 0, true
		w.gen++
		b := w.open
		w.open = newBatch()
		w.mu.Unlock()
		b.err = errors.New("session store queue full")
		close(b.done)
		w.log.Error("session store: queue over its memory bound; dropped it, will rewrite the store from memory when SQLite recovers",
			"max_bytes", w.maxBytes)
		w.signal()
		return nil
	}
	w.queue = append(w.queue, ops...)
	w.bytes += n
	b := w.open
	w.mu.Unlock()
	w.signal()
	return b
}

func (w *writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// queuedBytes is the memory the queue holds.
func (w *writer) queuedBytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bytes
}

// healthy returns the last failure, or nil.
func (w *writer) healthy() error {
	if p := w.failing.Load(); p != nil {
		return *p
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.overflow {
		return errors.New("session store: queue overflowed, rewriting from memory")
	}
	return nil
}

// run writes until stop, then flushes what is queued.
func (w *writer) run() {
	defer close(w.done)
	var backoff time.Duration
	for {
		select {
		case <-w.wake:
		case <-w.quit:
		}
		stopping := w.isStopping()
		ok := w.flushOnce()
		if ok {
			backoff = 0
			if stopping && w.empty() {
				return
			}
			continue
		}
		if stopping && w.stopDeadlinePassed() {
			w.log.Error("session store: giving up on unwritten changes at shutdown", "ops", w.queueLen())
			return
		}
		backoff = min(max(2*backoff, 50*time.Millisecond), 5*time.Second)
		select {
		case <-time.After(backoff):
		case <-w.quit:
			// Keep retrying at shutdown, briefly.
			time.Sleep(min(backoff, 200*time.Millisecond))
		}
		w.signal()
	}
}

func (w *writer) isStopping() bool {
	select {
	case <-w.quit:
		return true
	default:
		return false
	}
}

func (w *writer) empty() bool { return w.queueLen() == 0 }

func (w *writer) queueLen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

var stopGrace = 5 * time.Second

func (w *writer) stopDeadlinePassed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return time.Since(w.stopAt) > stopGrace
}

// flushOnce writes what is queued in one transaction and reports whether
// it committed (true also when there was nothing to write).
func (w *writer) flushOnce() bool {
	w.mu.Lock()
	resync := w.overflow
	if resync {
		// From here on ops are kept again; the snapshot below is taken
		// after this point, so it holds at least what they describe.
		w.overflow = false
	}
	ops := w.queue[:len(w.queue):len(w.queue)]
	gen := w.gen
	b := w.open
	if len(ops) == 0 && !resync {
		w.mu.Unlock()
		return true
	}
	w.open = newBatch()
	w.mu.Unlock()

	var snap []op
	if resync && w.snapshot != nil {
		snap = append([]op{newOp(opReset)}, w.snapshot()...)
	}
	start := time.Now()
	err := w.apply(snap, ops)
	w.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		w.metrics.errors.Add(1)
		if w.failing.Load() == nil {
			w.log.Error("session store: write failed; routing goes on, retrying", "error", err)
		}
		w.failing.Store(&err)
		b.err = err
		close(b.done)
		w.mu.Lock()
		if resync && w.gen == gen {
			w.overflow = true // the snapshot was not written: take a new one next time
		}
		w.mu.Unlock()
		return false
	}
	if w.failing.Swap(nil) != nil {
		w.log.Info("session store: writing again")
	}
	w.metrics.commits.Add(1)
	w.metrics.ops.Add(float64(len(ops) + len(snap)))
	w.mu.Lock()
	if w.gen == gen {
		// Drop what was written; ops queued meanwhile stay.
		n := 0
		for _, o := range ops {
			n += o.size
		}
		w.queue = append(w.queue[:0:0], w.queue[len(ops):]...)
		w.bytes -= n
	}
	w.mu.Unlock()
	close(b.done)
	return true
}

// apply runs the ops in one transaction, bounded by the writer's timeout.
func (w *writer) apply(lists ...[]op) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("session store: begin: %w", err)
	}
	var stmts [numOpKinds][]*sql.Stmt
	for _, list := range lists {
		for _, o := range list {
			if stmts[o.kind] == nil {
				for _, s := range w.stmts[o.kind] {
					stmts[o.kind] = append(stmts[o.kind], tx.StmtContext(ctx, s))
				}
			}
			for _, s := range stmts[o.kind] {
				if _, err := s.ExecContext(ctx, o.args...); err != nil {
					_ = tx.Rollback()
					return fmt.Errorf("session store: write (op %d): %w", o.kind, err)
				}
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("session store: commit: %w", err)
	}
	return nil
}

// stop asks run to flush and return, and waits for it.
func (w *writer) stop() {
	w.stopOnce.Do(func() {
		w.mu.Lock()
		w.stopAt = time.Now()
		w.mu.Unlock()
		close(w.quit)
	})
	<-w.done
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
