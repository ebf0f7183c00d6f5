package devices

import (
	"bytes"
	"cmp"
	"slices"
	"time"
)

// batchOrder is the writer's scratch for one batch: the points grouped by
// device (devices in the order they first appear), each device's in time
// order, and each device's merged last values. It keeps its memory from
// batch to batch, so that a batch of many points costs no allocation per
// point or per device once the writer has warmed up. It is the writer
// goroutine's own.
type batchOrder struct {
	idx map[*deviceNames]int // device → its index in devs
	// byID is the index of each device id in devs: a device forgotten
	// and registered again has new names, and its points still go with
	// its id's (one group per id).
	byID   map[string]int
	devs   []string
	starts []int // device i's points are sorted[starts[i]:starts[i+1]]
	of     []int // per point of the batch: its device's index
	pos    []int // scatter cursors
	// sorted is the batch's points grouped, each as the writer reads it (its
	// timestamp and metrics: half a queued point). Read by device
	// in the batch itself (16 MB for 262,144 points), each point was a
	// cache miss; copied here in that order, the writer reads them in
	// memory order.
	sorted []pointRef
	// latest is per device the latest timestamp of its points so far, and
	// unsorted whether one came before an earlier one (the points of a
	// device in arrival order, which is grouping's, are usually in time
	// order: then they need no sorting, nor reading again to say so).
	latest   []int64
	unsorted []bool
	// keys is per device the keys version all its points share, or 0;
	// seen its latest arrival (for the last values, without reading the
	// points again).
	keys []uint64
	seen []int64 // Unix ns

	// Last values: members of the device being merged, an index of them
	// when there are many, and the patches' bytes.
	members []lastMember
	memIdx  map[string]int
	lasts   []LastValue
	buf     []byte
}

// pointRef is a point of the batch as the writer reads it once grouped.
type pointRef struct {
	json []byte
	ts   int64
}

// lastMember is one metric of a device's last values: its raw key
// (without quotes) and raw value, both in a queued point's bytes.
type lastMember struct{ k, v []byte }

// memberIndexFrom is how many members a device's merge holds before it
// indexes them in a map rather than comparing them one by one.
const memberIndexFrom = 16

func newBatchOrder() *batchOrder {
	return &batchOrder{idx: make(map[*deviceNames]int), byID: make(map[string]int), memIdx: make(map[string]int)}
}

// group orders batch by device, and each device's points by timestamp
// (stable: equal timestamps keep their arrival order).
func (o *batchOrder) group(batch []queued) {
	clear(o.idx)
	clear(o.byID)
	o.devs, o.starts, o.of = o.devs[:0], o.starts[:0], o.of[:0]
	o.latest, o.unsorted, o.keys, o.seen = o.latest[:0], o.unsorted[:0], o.keys[:0], o.seen[:0]
	for k := range batch {
		p := &batch[k]
		i, ok := o.idx[p.dev]
		if !ok {
			i, ok = o.byID[p.dev.id]
			o.idx[p.dev] = i
		}
		if !ok {
			i = len(o.devs)
			o.idx[p.dev], o.byID[p.dev.id] = i, i
			o.devs = append(o.devs, p.dev.id)
			o.starts = append(o.starts, 0)
			o.latest = append(o.latest, p.ts)
			o.unsorted = append(o.unsorted, false)
			o.keys = append(o.keys, p.keys)
			o.seen = append(o.seen, p.arrived)
		}
		if p.ts < o.latest[i] {
			o.unsorted[i] = true
		}
		o.latest[i] = max(o.latest[i], p.ts)
		if p.keys != o.keys[i] {
			o.keys[i] = 0
		}
		o.seen[i] = max(o.seen[i], p.arrived)
		o.starts[i]++
		o.of = append(o.of, i)
	}
	sum := 0
	for i, n := range o.starts {
		o.starts[i] = sum
		sum += n
	}
	o.starts = append(o.starts, sum)
	o.pos = append(o.pos[:0], o.starts[:len(o.devs)]...)
	o.sorted = slices.Grow(o.sorted[:0], len(batch))[:len(batch)]
	for k := range batch {
		i := o.of[k]
		o.sorted[o.pos[i]] = pointRef{json: batch[k].json, ts: batch[k].ts}
		o.pos[i]++
	}
	byTS := func(a, b pointRef) int { return cmp.Compare(a.ts, b.ts) }
	for i := range o.devs {
		if o.unsorted[i] {
			slices.SortStableFunc(o.points(i), byTS)
		}
	}
}

// points returns device i's points, in time order.
func (o *batchOrder) points(i int) []pointRef { return o.sorted[o.starts[i]:o.starts[i+1]] }

// done lets the batch's points go.
func (o *batchOrder) done() {
	clear(o.sorted)
	clear(o.devs)
	clear(o.idx)
	clear(o.byID)
	clear(o.lasts)
	clear(o.members[:cap(o.members)]) // each device's merge reused it
}

// lastValues merges each device's points (in time order, so a later
// timestamp wins per metric; metrics in the order first seen) into one
// patch of its last values. The patches share the order's memory: they
// are valid until the next batch.
func (o *batchOrder) lastValues() []LastValue {
	o.lasts = o.lasts[:0]
	o.buf = o.buf[:0]
	for i, d := range o.devs {
		if v, seen, ok := o.sameKeys(i); ok {
			o.lasts = append(o.lasts, LastValue{Device: d, Values: v, Seen: seen})
			continue
		}
		o.members = o.members[:0]
		indexed := false
		seen := time.Unix(0, o.seen[i])
		for k := range o.points(i) {
			p := &o.points(i)[k]
			n := 0
			eachMember(p.json, func(k, v []byte) {
				o.setMember(n, k, v, &indexed)
				n++
			})
		}
		if indexed {
			clear(o.memIdx)
		}
		start := len(o.buf)
		o.buf = append(o.buf, '{')
		for j, m := range o.members {
			o.buf = appendMember(o.buf, j, m.k, m.v)
		}
		o.buf = append(o.buf, '}')
		o.lasts = append(o.lasts, LastValue{Device: d, Values: o.buf[start:len(o.buf):len(o.buf)], Seen: seen})
	}
	// o.buf may have moved while growing: the patches point into the
	// arrays they were written in, which stay as they are.
	return o.lasts
}

// sameKeys returns, when all of device i's points have the same keys
// (the same keys version), its latest point's metrics, which are then the
// merge, and the latest arrival.
func (o *batchOrder) sameKeys(i int) (values []byte, seen time.Time, ok bool) {
	if o.keys[i] == 0 {
		return nil, time.Time{}, false
	}
	pts := o.points(i)
	return pts[len(pts)-1].json, time.Unix(0, o.seen[i]), true
}

// setMember sets metric k (member n of its point) to v in the device's
// merge. A device usually sends its metrics in the same order each time:
// member n is most often the merge's member n.
func (o *batchOrder) setMember(n int, k, v []byte, indexed *bool) {
	ms := o.members
	if n < len(ms) && bytes.Equal(ms[n].k, k) {
		ms[n].v = v
		return
	}
	if !*indexed {
		for j := range ms {
			if bytes.Equal(ms[j].k, k) {
				ms[j].v = v
				return
			}
		}
		o.members = append(ms, lastMember{k, v})
		if len(o.members) >= memberIndexFrom {
			*indexed = true
			for j, m := range o.members {
				o.memIdx[string(m.k)] = j
			}
		}
		return
	}
	if j, ok := o.memIdx[string(k)]; ok {
		ms[j].v = v
		return
	}
	o.memIdx[string(k)] = len(ms)
	o.members = append(ms, lastMember{k, v})
}
