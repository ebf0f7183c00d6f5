package devices

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// errChunkCorrupt is returned for a stored chunk that does not decode.
var errChunkCorrupt = errors.New("telemetry chunk: corrupt")

// errChunkNewer is returned for a stored chunk of a format version this
// release does not know: a newer release wrote it (a cluster in a rolling
// upgrade). It is not corrupt: the pruner leaves it for a node that reads
// it, and a query says which it is.
var errChunkNewer = errors.New("telemetry chunk: written by a newer release of Tether (format version unknown to this one)")

// bitWriter appends bits, most significant first; done returns them.
// It gathers them in a 64-bit word and appends whole words, eight bytes
// at a time (the bytes are those a byte at a time would give).
type bitWriter struct {
	b   []byte
	acc uint64 // the last n bits written, not yet in b (n < 64 between calls)
	n   int
}

func (w *bitWriter) bit(v bool) {
	if v {
		w.bits(1, 1)
	} else {
		w.bits(0, 1)
	}
}

// bits writes the low n bits of v (n ≤ 64).
func (w *bitWriter) bits(v uint64, n int) {
	v &= uint64(1)<<n - 1 // all of v at n = 64
	free := 64 - w.n
	if n < free {
		w.acc = w.acc<<n | v
		w.n += n
		return
	}
	// The word fills: its 64 bits out, the rest of v kept.
	rest := n - free
	w.b = binary.BigEndian.AppendUint64(w.b, w.acc<<free|v>>rest) // acc<<64 is 0
	w.acc = v & (uint64(1)<<rest - 1)
	w.n = rest
}

// tail appends the bits not yet in w.b to dst, the last byte padded with
// zero bits.
func (w *bitWriter) tail(dst []byte) []byte {
	left := w.acc << (64 - w.n) // the n bits, most significant first
	for k := 0; k < w.n; k += 8 {
		dst = append(dst, byte(left>>56))
		left <<= 8
	}
	return dst
}

// done returns the bytes written, the last one padded with zero bits.
func (w *bitWriter) done() []byte {
	w.b = w.tail(w.b)
	w.acc, w.n = 0, 0
	return w.b
}

// appendTo appends the bytes written so far to dst as done would return
// them, and leaves w as it is, to be written on.
func (w *bitWriter) appendTo(dst []byte) []byte {
	return w.tail(append(dst, w.b...))
}

// size is len(w.appendTo(nil)).
func (w *bitWriter) size() int {
	return len(w.b) + (w.n+7)/8
}

// bitReader reads what a bitWriter wrote.
type bitReader struct {
	b   []byte
	pos int // bit position
}

func (r *bitReader) bit() (bool, error) {
	if r.pos >= 8*len(r.b) {
		return false, errChunkCorrupt
	}
	v := r.b[r.pos>>3]&(0x80>>(r.pos&7)) != 0
	r.pos++
	return v, nil
}

func (r *bitReader) bits(n int) (uint64, error) {
	if n < 0 || n > 64 || r.pos+n > 8*len(r.b) {
		return 0, errChunkCorrupt
	}
	var v uint64
	for n > 0 {
		off := r.pos & 7
		take := min(n, 8-off)
		by := uint64(r.b[r.pos>>3]>>(8-off-take)) & (1<<take - 1)
		v = v<<take | by
		r.pos += take
		n -= take
	}
	return v, nil
}

// Signed integers (timestamp delta-of-deltas, decimal deltas) are written
// zigzag-encoded in the smallest of these widths, after a unary prefix
// naming it: '0' is zero, '10' 7 bits, '110' 12 bits, and so on.
var intWidths = [...]int{0, 7, 12, 20, 32, 64}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

func (w *bitWriter) int(v int64) {
	z := zigzag(v)
	need := 64 - bits.LeadingZeros64(z)
	for i, wd := range intWidths {
		if need <= wd || i == len(intWidths)-1 {
			for range i {
				w.bit(true)
			}
			if i < len(intWidths)-1 {
				w.bit(false)
			}
			w.bits(z, wd)
			return
		}
	}
}

func (r *bitReader) int() (int64, error) {
	i := 0
	for i < len(intWidths)-1 {
		b, err := r.bit()
		if err != nil {
			return 0, err
		}
		if !b {
			break
		}
		i++
	}
	z, err := r.bits(intWidths[i])
	return unzigzag(z), err
}

// column writes vs in code with parameter k: k in 6 bits, then each
// value as putK writes it. In codeInts (the only code of chunk version
// 1), k is a width chosen for the column (intsCostHist), and each value is
// '0' and k bits when its zigzag fits k bits, else '1' and the value as
// int writes it: a column of small deltas thus costs about k+1 bits a
// value, whatever k its noise needs. codeRice: riceK.
func (w *bitWriter) column(vs []int64, code byte, k int) {
	w.bits(uint64(k), 6)
	for _, v := range vs {
		w.putK(v, code, k)
	}
}

// intK writes one value of a column of integers written with width k.
func (w *bitWriter) intK(v int64, k int) {
	z := zigzag(v)
	if 64-bits.LeadingZeros64(z) <= k {
		w.bits(z, k+1) // '0' and k bits
	} else {
		w.bit(true)
		w.int(v)
	}
}

// intLen is the significant bits of v's zigzag: what intHist counts.
func intLen(v int64) int { return 64 - bits.LeadingZeros64(zigzag(v)) }

// intHist counts values by intLen.
type intHist [65]int32

// intsCostHist returns the bits a column in codeInts takes for the values
// whose intLen counts are hist, and the width k it uses.
func intsCostHist(hist *intHist) (cost, k int) {
	// The best k is one of the lengths present (between two of them the
	// cost only grows with k).
	var present [65]int
	p := 0
	for l, n := range hist {
		if n > 0 {
			present[p] = l
			p++
		}
	}
	best, bestK := -1, 0
	for _, k := range present[:p] {
		if k == 64 {
			k = 63 // k is written in 6 bits
		}
		cost := 0
		for _, l := range present[:p] {
			if l <= k {
				cost += int(hist[l]) * (1 + k)
			} else {
				cost += int(hist[l]) * (1 + intCosts[l])
			}
		}
		if best < 0 || cost < best {
			best, bestK = cost, k
		}
	}
	if best < 0 {
		best = 0
	}
	return 6 + best, bestK
}

// intCosts[l] is intCost(l).
var intCosts = func() (c [len(intHist{})]int) {
	for l := range c {
		c[l] = intCost(l)
	}
	return
}()

// intCost is the bits int takes for a zigzag of l significant bits.
func intCost(l int) int {
	for i, wd := range intWidths {
		if l <= wd {
			if i == len(intWidths)-1 {
				return i + wd
			}
			return i + 1 + wd
		}
	}
	return 0
}

// ints reads n integers written by bitWriter.column in codeInts.
func (r *bitReader) ints(dst []int64, n int) ([]int64, error) {
	k, err := r.bits(6)
	if err != nil {
		return nil, err
	}
	for range n {
		esc, err := r.bit()
		if err != nil {
			return nil, err
		}
		var v int64
		if esc {
			v, err = r.int()
		} else {
			var z uint64
			z, err = r.bits(int(k))
			v = unzigzag(z)
		}
		if err != nil {
			return nil, err
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// Rice codes (chunk version 2) suit the integers whose small values are
// the most frequent, as the deltas of a sensor's noise or a vehicle's
// position are: a column written with parameter k (6 bits, first) has
// each value's zigzag z as z>>k in unary ('1's ended by a '0') and its k
// low bits. A quotient of riceEscape or more is written as riceEscape
// '1's and the value as int writes it, so that an outlier costs at most
// a few bytes.
const riceEscape = 16

// riceK writes one value of a column of integers Rice-coded with k.
func (w *bitWriter) riceK(v int64, k int) {
	z := zigzag(v)
	q := z >> k
	if q >= riceEscape {
		w.bits(1<<riceEscape-1, riceEscape)
		w.int(v)
		return
	}
	if n := int(q) + 1 + k; n <= 64 { // q '1's, a '0' and k bits at once
		w.bits((1<<(q+1)-2)<<k|z&(1<<k-1), n)
		return
	}
	w.bits(1<<(q+1)-2, int(q)+1)
	w.bits(z, k)
}

// riceK reads one value written by bitWriter.riceK.
func (r *bitReader) riceK(k int) (int64, error) {
	q := 0
	for q < riceEscape {
		b, err := r.bit()
		if err != nil {
			return 0, err
		}
		if !b {
			break
		}
		q++
	}
	if q == riceEscape {
		return r.int()
	}
	low, err := r.bits(k)
	return unzigzag(uint64(q)<<k | low), err
}

// riceCostHist returns the bits, in halves, that a Rice-coded column of
// the values whose intLen counts are hist takes about, and the k that
// makes it smallest. The count is an estimate (a value of l significant
// bits is taken to have the mean quotient of all such values), made the
// same way by the encoder and the appender, which need the same choice
// rather than the exact cost. The k tried are those near the median
// length (where the best one is for noise that is not uniform), so that
// the appender, which chooses again at each write, does little work.
func riceCostHist(hist *intHist) (halves, k int) {
	total := 0
	for _, n := range hist {
		total += int(n)
	}
	if total == 0 {
		return 12, 0
	}
	// The median length; then the counts of values of up to k bits
	// (below), and the cost of the escapes of k+5 bits or more (esc),
	// by running sums as k grows.
	med, below := 0, 0
	for l := 0; below+int(hist[l]) < (total+1)/2; l++ {
		below += int(hist[l])
		med = l + 1
	}
	lo, hi := max(0, med-4), min(63, med+2)
	below, esc := 0, 0
	for l := range hist {
		if l < lo {
			below += int(hist[l])
		} else if l >= lo+5 {
			esc += int(hist[l]) * 2 * (riceEscape + intCosts[l])
		}
	}
	best, bestK := -1, 0
	for k := lo; k <= hi; k++ {
		below += int(hist[k])
		cost := 2*(k+1)*below + esc
		for s := 0; s < 4 && k+1+s < len(hist); s++ {
			cost += int(hist[k+1+s]) * (2*(k+1) + 3<<s - 1)
		}
		if best < 0 || cost < best {
			best, bestK = cost, k
		}
		if k+5 < len(hist) { // no longer an escape at k+1
			esc -= int(hist[k+5]) * 2 * (riceEscape + intCosts[k+5])
		}
	}
	return 12 + best, bestK
}

// riceHalves is about twice the bits riceK takes for a zigzag of l
// significant bits (riceCostHist sums it by counts): the quotients of
// such values are [2^(l-1-k), 2^(l-k)), their mean (3·2^(l-1-k) - 1)/2,
// and from 2^4 on they escape.
func riceHalves(l, k int) int {
	if l <= k {
		return 2 * (k + 1)
	}
	if s := l - 1 - k; s < 4 {
		return 2*(k+1) + 3<<s - 1
	}
	return 2 * (riceEscape + intCosts[l])
}

// intStream codes.
const (
	codeInts = 0 // a width k, a flag bit and k bits a value
	codeRice = 1 // Rice codes
)

// colCost returns the code that writes a column of the values whose
// intLen counts are hist in fewer bits, its parameter k and its cost in
// half bits.
func colCost(hist *intHist) (code byte, k, halves int) {
	c, k := intsCostHist(hist)
	r, rk := riceCostHist(hist)
	if r < 2*c {
		return codeRice, rk, r
	}
	return codeInts, k, 2 * c
}

// putK writes one value of a column of integers in code with k.
func (w *bitWriter) putK(v int64, code byte, k int) {
	if code == codeRice {
		w.riceK(v, k)
	} else {
		w.intK(v, k)
	}
}

// column reads n integers written (after the 6-bit k) in code.
func (r *bitReader) column(dst []int64, n int, code byte) ([]int64, error) {
	if code == codeInts {
		return r.ints(dst, n)
	}
	k, err := r.bits(6)
	if err != nil {
		return nil, err
	}
	for range n {
		v, err := r.riceK(int(k))
		if err != nil {
			return nil, err
		}
		dst = append(dst, v)
	}
	return dst, nil
}
