package devices

import (
	"encoding/binary"
	"slices"
)

// chunkAppender keeps the encoding of points [from, n) of a chunk the
// writer is filling, so that each write encodes only the points added
// since the last one rather than the whole range again: each column's
// bit streams, and the choices the full encoder (encoder.chunk) makes
// over a whole column (the integers' code and its k, decimals or XOR,
// deltas, delta-of-deltas or offsets from the smallest, which it keeps
// with the length histograms and the bounds those choices are made
// from). Where a new point changes one of those choices, that
// stream is written again from the chunk's data. chunk returns the bytes
// encoder.chunk returns for the same points (FuzzChunkAppender), so the
// format and the decoder are those of chunkVersion.
//
// The chunk's points before n must not change while it is in use (the
// writer drops it when it sorts them).
type chunkAppender struct {
	from, n int
	tsHist  intHist // intLen counts of the timestamps' delta-of-deltas
	tsLast  int64
	tsDelta int64
	ts      intStream
	cols    []colAppender
}

// intStream is a first value as 64 bits, then (for the timestamps) a
// bit naming the code, then a column of integers as bitWriter.column
// writes them in code with k.
type intStream struct {
	w    bitWriter
	code byte
	k    int
}

func (s *intStream) start(first uint64, code byte, k int, codeBit bool) {
	s.w = bitWriter{b: s.w.b[:0]}
	s.w.bits(first, 64)
	if codeBit {
		s.w.bits(uint64(code), 1)
	}
	s.w.bits(uint64(k), 6)
	s.code, s.k = code, k
}

// colAppender is one column's part of a chunkAppender.
type colAppender struct {
	at    int    // the next point to encode
	runs  []byte // the runs of symbols before the last
	nruns int
	sym   uint32 // the last run's symbol
	run   int    // and length (0 before the first point)
	dict  []byte // the dictionary's entries, encoded
	ndict int
	nnums int // numbers so far
	// The numbers' decimal form, as decimals finds it: dead once a
	// number has none with at most 15 digits after the point; else the
	// exponent, the index of the number that last raised it, and
	// whether one before that is not exact with it (then decimals
	// fails too, until the exponent rises again).
	dead     bool
	exp      int
	raised   int
	notExact bool
	// The scaled decimals, while they are usable: the last one and its
	// delta, the smallest and the largest, the intLen counts of the
	// deltas and of the delta-of-deltas, and the stream in decMode (0:
	// none).
	lastM, lastD   int64
	loM, hiM       int64
	histD, histDoD intHist
	decMode        byte
	dec            intStream
	// xor is Gorilla's encoding of the numbers, made (xorOn) when
	// first needed (no decimal form, or one with 10 digits or more,
	// where the smaller is written) and kept up from then on.
	xor   xorWriter
	xorOn bool
}

func newChunkAppender(from int) *chunkAppender {
	return &chunkAppender{from: from, n: from}
}

// reset makes a an appender of the points from from on, keeping its
// buffers.
func (a *chunkAppender) reset(from int) {
	*a = chunkAppender{from: from, n: from, ts: intStream{w: bitWriter{b: a.ts.w.b[:0]}}, cols: a.cols[:0]}
}

// newCol adds a column appender for points from at on, reusing the
// buffers of one that a had before reset.
func (a *chunkAppender) newCol(at int) {
	if len(a.cols) == cap(a.cols) {
		a.cols = append(a.cols, colAppender{at: at})
		return
	}
	a.cols = a.cols[:len(a.cols)+1]
	c := &a.cols[len(a.cols)-1]
	*c = colAppender{at: at, runs: c.runs[:0], dict: c.dict[:0],
		dec: intStream{w: bitWriter{b: c.dec.w.b[:0]}}, xor: xorWriter{w: bitWriter{b: c.xor.w.b[:0]}}}
}

// chunk encodes points [a.from, len(d.ts)) of d, appended to dst, after
// encoding those not yet encoded; e is scratch space.
func (a *chunkAppender) chunk(e *encoder, dst []byte, d *chunkData) []byte {
	a.extend(e, d)
	dst = append(dst, chunkVersion)
	dst = binary.AppendUvarint(dst, uint64(a.n-a.from))
	dst = binary.AppendUvarint(dst, uint64(len(d.cols)))
	for i := range d.cols {
		dst = appendBytes(dst, []byte(d.cols[i].name))
	}
	e.bits = a.ts.w.appendTo(e.bits[:0])
	dst = appendBytes(dst, e.bits)
	for i := range a.cols {
		e.body = a.cols[i].body(e.body[:0])
		dst = appendBytes(dst, e.body)
	}
	return dst
}

// extend encodes d's points from a.n on.
func (a *chunkAppender) extend(e *encoder, d *chunkData) {
	n := len(d.ts)
	if a.n < n {
		a.extendTimestamps(e, d.ts[a.from:n])
	}
	if len(a.cols) < len(d.cols) {
		a.cols = slices.Grow(a.cols, len(d.cols)-len(a.cols))
		for len(a.cols) < len(d.cols) {
			a.newCol(a.from)
		}
	}
	for i := range a.cols {
		a.cols[i].extend(e, &d.cols[i], a.from, n)
	}
	a.n = n
}

// extendTimestamps encodes ts[a.n-a.from:], where ts are the timestamps
// from a.from on.
func (a *chunkAppender) extendTimestamps(e *encoder, ts []int64) {
	fresh := a.n == a.from
	dods := e.dod[:0]
	for i := a.n - a.from; i < len(ts); i++ {
		if i == 0 {
			a.tsLast = ts[0]
			continue
		}
		d := ts[i] - a.tsLast
		dod := d - a.tsDelta
		a.tsLast, a.tsDelta = ts[i], d
		a.tsHist[intLen(dod)]++
		dods = append(dods, dod)
	}
	if code, k, _ := colCost(&a.tsHist); fresh || code != a.ts.code || k != a.ts.k {
		a.ts.start(uint64(ts[0]), code, k, true)
		if !fresh { // all of them again
			dods = deltas(dods[:0], ts, true)
		}
	}
	for _, v := range dods {
		a.ts.w.putK(v, a.ts.code, a.ts.k)
	}
	e.dod = dods
}

// extend encodes points [c.at, n) of col, a column of the points from
// from on.
func (c *colAppender) extend(e *encoder, col *chunkCol, from, n int) {
	fresh := e.nums[:0]
	for i := c.at; i < n; i++ {
		s := col.syms[i]
		if c.run > 0 && s == c.sym {
			c.run++
		} else {
			if c.run > 0 {
				c.runs = binary.AppendUvarint(c.runs, uint64(c.sym))
				c.runs = binary.AppendUvarint(c.runs, uint64(c.run))
				c.nruns++
			}
			c.sym, c.run = s, 1
		}
		if s == symNumber {
			fresh = append(fresh, col.nums[i])
		}
	}
	c.at = n
	for ; c.ndict < len(col.dict); c.ndict++ {
		c.dict = appendBytes(c.dict, []byte(col.dict[c.ndict]))
	}
	e.nums = fresh
	if len(fresh) > 0 {
		c.addNumbers(e, fresh, col, from, n)
	}
}

// colNumbers appends the numbers of points [from, n) of col to dst.
func colNumbers(dst []float64, col *chunkCol, from, n int) []float64 {
	for i := from; i < n; i++ {
		if col.syms[i] == symNumber {
			dst = append(dst, col.nums[i])
		}
	}
	return dst
}

// addNumbers encodes the column's numbers fresh, the last of points
// [from, n) of col.
func (c *colAppender) addNumbers(e *encoder, fresh []float64, col *chunkCol, from, n int) {
	first := c.nnums
	c.nnums += len(fresh)
	if c.xorOn {
		for _, v := range fresh {
			c.xor.add(v)
		}
	}
	defer func() {
		if !c.xorOn && (c.decMode == 0 || c.exp >= 10) {
			c.xorOn = true
			e.all = colNumbers(e.all[:0], col, from, n)
			for _, v := range e.all {
				c.xor.add(v)
			}
		}
	}()
	if c.dead {
		return
	}
	// decimals, from where it stopped.
	raised := false
	ms := e.ms[:0]
	for j, v := range fresh {
		var m int64
		ok := false
		for ; c.exp < len(pow10); c.exp++ {
			if m, ok = mantissa(v, c.exp); ok {
				break
			}
			c.raised, raised = first+j, true
		}
		if !ok {
			c.dead, c.decMode = true, 0
			return
		}
		ms = append(ms, m)
	}
	e.ms = ms
	if raised {
		nums := colNumbers(e.all[:0], col, from, n)
		e.all = nums
		c.notExact = false
		for _, v := range nums[:c.raised] {
			if _, ok := mantissa(v, c.exp); !ok {
				c.notExact = true
				break
			}
		}
	}
	if c.notExact {
		c.decMode = 0
		return
	}
	if !raised && first == 0 {
		c.rebuildDecimals(e, ms) // the first numbers
		return
	}
	if raised || c.decMode == 0 {
		c.rebuildDecimals(e, c.mantissas(e, col, from, n))
		return
	}
	ds, dods := e.d[:0], e.dod[:0]
	lo, hi := c.loM, c.hiM
	for _, m := range ms {
		d := m - c.lastM
		dod := d - c.lastD
		c.lastM, c.lastD = m, d
		c.histD[intLen(d)]++
		c.histDoD[intLen(dod)]++
		ds, dods = append(ds, d), append(dods, dod)
		lo, hi = min(lo, m), max(hi, m)
	}
	e.d, e.dod = ds, dods
	mode, k := decChoice(&c.histD, &c.histDoD, c.nnums, lo, hi)
	if mode != c.decMode || k != c.dec.k || mode == numDecRange && lo != c.loM {
		c.rebuildDecimals(e, c.mantissas(e, col, from, n))
		return
	}
	c.loM, c.hiM = lo, hi
	if mode == numDecRange {
		for _, m := range ms {
			c.dec.w.bits(uint64(m-lo), k)
		}
		return
	}
	if mode == numDecDoD || mode == numDecDoDRice {
		ds = dods
	}
	for _, v := range ds {
		c.dec.w.putK(v, c.dec.code, k)
	}
}

// mantissas returns the column's numbers (of points [from, n) of col)
// scaled by c.exp, with which they are exact.
func (c *colAppender) mantissas(e *encoder, col *chunkCol, from, n int) []int64 {
	e.all = colNumbers(e.all[:0], col, from, n)
	ms := e.ms[:0]
	for _, v := range e.all {
		m, _ := mantissa(v, c.exp)
		ms = append(ms, m)
	}
	e.ms = ms
	return ms
}

// rebuildDecimals writes the scaled decimals' stream again from ms, all
// of the column's numbers scaled.
func (c *colAppender) rebuildDecimals(e *encoder, ms []int64) {
	e.d, e.dod = deltas(e.d[:0], ms, false), deltas(e.dod[:0], ms, true)
	c.histD, c.histDoD = intHist{}, intHist{}
	for i := range e.d {
		c.histD[intLen(e.d[i])]++
		c.histDoD[intLen(e.dod[i])]++
	}
	c.lastM, c.lastD = ms[len(ms)-1], 0
	if len(ms) > 1 {
		c.lastD = ms[len(ms)-1] - ms[len(ms)-2]
	}
	c.loM, c.hiM = ms[0], ms[0]
	for _, m := range ms {
		c.loM, c.hiM = min(c.loM, m), max(c.hiM, m)
	}
	mode, k := decChoice(&c.histD, &c.histDoD, len(ms), c.loM, c.hiM)
	c.decMode = mode
	if mode == numDecRange {
		c.dec.start(zigzag(c.loM), codeInts, k, false)
		for _, m := range ms {
			c.dec.w.bits(uint64(m-c.loM), k)
		}
		return
	}
	c.dec.start(zigzag(ms[0]), modeCode(mode), k, false)
	vs := e.d
	if mode == numDecDoD || mode == numDecDoDRice {
		vs = e.dod
	}
	for _, v := range vs {
		c.dec.w.putK(v, c.dec.code, k)
	}
}

// body appends the column's encoding, as encoder.col makes it.
func (c *colAppender) body(dst []byte) []byte {
	nruns := c.nruns
	if c.run > 0 {
		nruns++
	}
	dst = binary.AppendUvarint(dst, uint64(nruns))
	dst = append(dst, c.runs...)
	if c.run > 0 {
		dst = binary.AppendUvarint(dst, uint64(c.sym))
		dst = binary.AppendUvarint(dst, uint64(c.run))
	}
	dst = binary.AppendUvarint(dst, uint64(c.ndict))
	dst = append(dst, c.dict...)
	switch {
	case c.nnums == 0:
		return append(dst, numNone)
	case c.decMode != 0 && (c.exp < 10 || c.dec.w.size() < c.xor.w.size()):
		dst = append(dst, c.decMode, byte(c.exp))
		return c.dec.w.appendTo(dst)
	}
	dst = append(dst, numXOR)
	return c.xor.w.appendTo(dst)
}
