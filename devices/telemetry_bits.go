package devices

import (
	"errors"
	"math/bits"
)

// errChunkCorrupt is returned for a stored chunk that does not decode.
var errChunkCorrupt = errors.New("telemetry chunk: corrupt")

// bitWriter appends bits, most significant first.
type bitWriter struct {
	b    []byte
	free uint8 // unused low bits of the last byte
}

func (w *bitWriter) bit(v bool) {
	if w.free == 0 {
		w.b = append(w.b, 0)
		w.free = 8
	}
	w.free--
	if v {
		w.b[len(w.b)-1] |= 1 << w.free
	}
}

// bits writes the low n bits of v (n ≤ 64).
func (w *bitWriter) bits(v uint64, n int) {
	for n > 0 {
		if w.free == 0 {
			w.b = append(w.b, 0)
			w.free = 8
		}
		take := min(n, int(w.free))
		chunk := byte(v>>(n-take)) & byte(1<<take-1)
		w.free -= uint8(take)
		w.b[len(w.b)-1] |= chunk << w.free
		n -= take
	}
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

// ints writes a column of signed integers: a 6-bit width k chosen for the
// column, then each value as '0' and k bits when its zigzag fits k bits,
// else '1' and the value as int writes it. A column of small deltas thus
// costs about k+1 bits a value, whatever k its noise needs.
func (w *bitWriter) ints(vs []int64) {
	var hist [65]int
	for _, v := range vs {
		hist[64-bits.LeadingZeros64(zigzag(v))]++
	}
	best, bestK := -1, 0
	for k := range 64 {
		cost := 0
		for l, n := range hist {
			if n == 0 {
				continue
			}
			if l <= k {
				cost += n * (1 + k)
			} else {
				cost += n * (1 + intCost(l))
			}
		}
		if best < 0 || cost < best {
			best, bestK = cost, k
		}
	}
	w.bits(uint64(bestK), 6)
	for _, v := range vs {
		z := zigzag(v)
		if 64-bits.LeadingZeros64(z) <= bestK {
			w.bit(false)
			w.bits(z, bestK)
		} else {
			w.bit(true)
			w.int(v)
		}
	}
}

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

// ints reads n integers written by bitWriter.ints.
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
