package devices

import (
	"math/bits"
	"runtime"
	"sync/atomic"
)

// pointQueue is the bounded queue between the telemetry hook, which runs
// on every publisher's goroutine, and the writer: a ring of slots, each
// with a sequence number that says whether it is free or filled (Dmitry
// Vyukov's bounded queue, with one consumer). A point is queued with one
// compare-and-swap and taken without one: a channel took a lock on both
// sides, and the writer a select per point.
//
// It holds at most size points, a slot each (position p's slot is p mod
// size: a mask when size is a power of two, as by default).
type pointQueue struct {
	slots []queueSlot
	mask  uint64 // size-1 when size is a power of two, else 0
	size  uint64
	_     [64]byte // tail, which producers write, on a line of its own
	tail  atomic.Uint64
	_     [56]byte
	// head is the next position the writer takes; published is head as
	// of the writer's last take, which producers read for the bound.
	head      uint64
	published atomic.Uint64
}

// queueSlot is a point's place in the ring: seq is its position when
// free for that position's producer, and the position + 1 once filled.
type queueSlot struct {
	seq atomic.Uint64
	p   queued
}

func newPointQueue(size int) *pointQueue {
	n := uint64(max(size, 1))
	q := &pointQueue{slots: make([]queueSlot, n), size: n}
	if bits.OnesCount64(n) == 1 {
		q.mask = n - 1
	}
	for i := range q.slots {
		q.slots[i].seq.Store(uint64(i))
	}
	return q
}

// slot is position pos's slot.
func (q *pointQueue) slot(pos uint64) *queueSlot {
	if q.mask != 0 || q.size == 1 {
		return &q.slots[pos&q.mask]
	}
	return &q.slots[pos%q.size]
}

// push queues p and returns how many points were queued then (p
// included), or false when the queue is full. It never blocks.
func (q *pointQueue) push(p *queued) (int, bool) {
	for {
		pos := q.tail.Load()
		if pos-q.published.Load() >= q.size {
			return 0, false
		}
		s := q.slot(pos)
		seq := s.seq.Load()
		switch {
		case seq == pos:
			if q.tail.CompareAndSwap(pos, pos+1) {
				s.p = *p
				s.seq.Store(pos + 1)
				return int(pos + 1 - q.published.Load()), true
			}
		case seq < pos:
			// The slot's point of the last lap is not taken yet.
			return 0, false
		}
		// Another producer took pos: try the next.
	}
}

// take calls fn with n of the queued points (n at most len), in order
// (the point is valid during the call). A point whose producer has taken
// its slot but not yet filled it is waited for: it is a few instructions
// away (unless its goroutine was preempted there), and a point that
// another producer queued after it, whose Add has returned, must not be
// left behind by Flush. It is the writer's alone.
func (q *pointQueue) take(n int, fn func(p *queued)) {
	head := q.head
	for ; n > 0; n-- {
		s := q.slot(head)
		for s.seq.Load() != head+1 {
			runtime.Gosched()
		}
		fn(&s.p)
		s.p = queued{} // let the point go
		s.seq.Store(head + q.size)
		head++
		if head-q.head == 1024 { // free room for producers as it goes
			q.head = head
			q.published.Store(head)
		}
	}
	q.head = head
	q.published.Store(head)
}

// len is how many points are queued (or being queued).
func (q *pointQueue) len() int {
	return int(q.tail.Load() - q.published.Load())
}
