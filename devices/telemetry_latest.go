package devices

import (
	"bytes"
	"time"
)

// latest merges the points the writer takes into each device's latest
// value of each metric (a later timestamp wins; at equal timestamps the
// later arrival), from one write to the next, so that a write sets each
// device's last values with one patch of what changed since the previous
// one. It copies what it keeps (a point's bytes are free once taken) and
// keeps each device's members from write to write, so that merging costs
// no allocation once a device's metrics are known. It is the writer
// goroutine's own.
type latest struct {
	devs    map[string]*devLatest
	pending []*devLatest // changed since the last write, in order
	lasts   []LastValue
	buf     []byte
}

// devLatest is one device's merge.
type devLatest struct {
	device  string
	members []latestMember
	idx     map[string]int // member of a name, once there are many
	seen    time.Time      // latest arrival since the last write
	dirty   bool
	used    time.Time // last write interval it changed in
}

// latestMember is one metric: its raw key (without quotes) and raw
// value, copied, and the timestamp of the point the value is from.
type latestMember struct {
	k, v  []byte
	ts    int64
	dirty bool // set since the last write
}

// memberIndexFrom is how many members a device's merge holds before it
// indexes them in a map rather than comparing them one by one.
const memberIndexFrom = 16

func newLatest() *latest { return &latest{devs: make(map[string]*devLatest)} }

// add merges a point of device at ts (Unix ms), its metrics obj (a
// compact object as ParseTelemetry writes it), received at arrived.
func (l *latest) add(device string, ts int64, obj []byte, arrived, now time.Time) {
	d := l.devs[device]
	if d == nil {
		d = &devLatest{device: device}
		l.devs[device] = d
	}
	if !d.dirty {
		d.dirty = true
		l.pending = append(l.pending, d)
	}
	d.used = now
	if arrived.After(d.seen) {
		d.seen = arrived
	}
	n := 0
	eachMember(obj, func(k, v []byte) {
		d.set(n, k, v, ts)
		n++
	})
}

// set sets metric k (member n of its point) to v at ts. A device usually
// sends its metrics in the same order each time: member n is most often
// the merge's member n.
func (d *devLatest) set(n int, k, v []byte, ts int64) {
	j := -1
	ms := d.members
	switch {
	case n < len(ms) && bytes.Equal(ms[n].k, k):
		j = n
	case d.idx != nil:
		if i, ok := d.idx[string(k)]; ok {
			j = i
		}
	default:
		for i := range ms {
			if bytes.Equal(ms[i].k, k) {
				j = i
				break
			}
		}
	}
	if j < 0 {
		j = len(ms)
		d.members = append(ms, latestMember{k: append([]byte(nil), k...)})
		if d.idx != nil {
			d.idx[string(k)] = j
		} else if len(d.members) >= memberIndexFrom {
			d.idx = make(map[string]int, 2*len(d.members))
			for i, m := range d.members {
				d.idx[string(m.k)] = i
			}
		}
	}
	m := &d.members[j]
	if m.dirty && ts < m.ts {
		return // an earlier point than the one merged
	}
	m.v = append(m.v[:0], v...)
	m.ts, m.dirty = ts, true
}

// patches returns each changed device's patch of its last values (the
// members set since the last write, in the order first seen) and last
// seen, and starts the next write's merge. The patches share the merge's
// memory: they are valid until the next call.
func (l *latest) patches() []LastValue {
	l.lasts = l.lasts[:0]
	l.buf = l.buf[:0]
	for _, d := range l.pending {
		start := len(l.buf)
		l.buf = append(l.buf, '{')
		n := 0
		for j := range d.members {
			m := &d.members[j]
			if !m.dirty {
				continue
			}
			l.buf = appendMember(l.buf, n, m.k, m.v)
			n++
			m.dirty = false
		}
		l.buf = append(l.buf, '}')
		l.lasts = append(l.lasts, LastValue{Device: d.device, Values: l.buf[start:len(l.buf):len(l.buf)], Seen: d.seen})
		d.dirty, d.seen = false, time.Time{}
	}
	clear(l.pending)
	l.pending = l.pending[:0]
	// l.buf may have moved while growing: the patches point into the
	// arrays they were written in, which stay as they are.
	return l.lasts
}

// evict forgets the devices that sent nothing since before.
func (l *latest) evict(before time.Time) {
	for id, d := range l.devs {
		if !d.dirty && d.used.Before(before) {
			delete(l.devs, id)
		}
	}
}
