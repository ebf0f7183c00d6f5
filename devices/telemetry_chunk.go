package devices

import (
	"encoding/binary"
	"math"
	"math/bits"
	"slices"
	"strings"
)

// A history chunk holds up to chunkPoints points of one device in columns:
// the timestamps, then one column per metric. Encoded (version 2):
//
//	0x02 uvarint(points) uvarint(columns)
//	per column: uvarint(len) name
//	uvarint(len) timestamps: the first as 64 bits, then delta-of-deltas
//	  (a bit naming their code, codeInts or codeRice, then the column of
//	  integers as bitWriter.column reads it)
//	per column: uvarint(len) column
//
// A column is the run-length-encoded symbols of its points (0 absent,
// 1 number, 2+i the dictionary's i-th value), then the dictionary of
// the column's other values as their JSON text (strings, true, false),
// then its numbers in one of six encodings, whichever is smallest:
// Gorilla's XOR of consecutive float64s, or, when every number is a
// decimal with at most 15 digits after the point, the numbers scaled to
// integers and written as deltas or as delta-of-deltas, in either code
// (codeInts or codeRice: telemetry_bits.go), or as their
// offsets from the smallest in a fixed width.
//
// Version 1 (releases before 2026-12) is version 2 without the bit
// before the timestamps' column (always codeInts) and without the modes
// numDecDeltaRice, numDecDoDRice and numDecRange; it decodes as it
// always did (testdata/chunk_v1.bin).
//
// Sizes are prefixed so a query can skip the columns it does not read; a
// decoder checks every length and count, since a chunk is outside input
// once it is on disk (FuzzTelemetryChunk).
const chunkVersion = 2

// Decoding limits: far above what the writer makes (chunkPoints points,
// MaxDeviceMetrics columns), low enough that no stored blob makes a
// decoder allocate much.
const (
	maxChunkDecodePoints = 1 << 13
	maxChunkDecodeCells  = 1 << 20
)

// Column symbols.
const (
	symAbsent = 0
	symNumber = 1
	symDict   = 2
)

// Number encodings.
const (
	numNone     = 0
	numXOR      = 1
	numDecDelta = 2
	numDecDoD   = 3
	// Version 2: the same, Rice-coded; and the scaled decimals as their
	// offsets from the smallest, each in as many bits as the largest
	// offset takes (numbers spread evenly over a range: each delta would
	// cost about a bit more).
	numDecDeltaRice = 4
	numDecDoDRice   = 5
	numDecRange     = 6
)

// chunkData is a chunk decoded (or being built by the writer): the points'
// timestamps in time order and one column per metric.
type chunkData struct {
	ts   []int64
	cols []chunkCol
	// spare, for the writer's chunks, gives new columns the arrays of
	// chunks written complete.
	spare *spareArrays
}

// heapSize is about how many bytes c holds decoded.
func (c *chunkData) heapSize() int {
	n := 64 + 8*cap(c.ts)
	for j := range c.cols {
		col := &c.cols[j]
		n += 128 + len(col.name) + 4*cap(col.syms) + 8*cap(col.nums)
		for _, d := range col.dict {
			n += 16 + len(d)
		}
	}
	return n
}

// chunkCol is one metric's values: per point a symbol, and the number
// where the symbol is symNumber. nums is as long as syms, or, in the
// writer's chunks, nil while the column has no number (a string or
// boolean metric's column then holds 4 bytes a point, not 12).
type chunkCol struct {
	name string
	syms []uint32
	nums []float64
	dict []string // JSON text
	// index of dict, for the writer, and the entry last set plus one
	// (a device's string or boolean seldom changes from one point to the
	// next).
	dictIdx  map[string]uint32
	lastDict uint32
	// plain: the writer's column whose name has no backslash and no
	// quote (its raw key is the name itself, without escapes).
	plain bool
}

// col returns the column named name, adding it (absent at every point so
// far) if needed.
func (c *chunkData) col(name string, idx map[string]int) *chunkCol {
	return &c.cols[c.colIndex(name, idx)]
}

// colIndex is col's index.
func (c *chunkData) colIndex(name string, idx map[string]int) int {
	if i, ok := idx[name]; ok {
		return i
	}
	idx[name] = len(c.cols)
	col := chunkCol{name: name, plain: !strings.ContainsAny(name, `\"`)}
	if c.spare != nil {
		col.syms = c.spare.symbols(len(c.ts), cap(c.ts))
	}
	if col.syms == nil {
		col.syms = make([]uint32, len(c.ts), cap(c.ts))
	}
	c.cols = append(c.cols, col)
	return len(c.cols) - 1
}

// numsFor returns the numbers of col, a column of c that has none yet
// (nil), zero at each point so far: as long as its symbols, and as
// large.
func (c *chunkData) numsFor(col *chunkCol) []float64 {
	var nums []float64
	if c.spare != nil {
		nums = c.spare.numbers(len(col.syms), cap(col.syms))
	}
	if nums == nil {
		nums = make([]float64, len(col.syms), cap(col.syms))
	}
	return nums
}

// setDict sets point i of the column to the JSON value v (copied when
// it is new to the column).
func (col *chunkCol) setDict(i int, v []byte) {
	if l := col.lastDict; l > 0 && int(l) <= len(col.dict) && col.dict[l-1] == string(v) {
		col.syms[i] = symDict + l - 1
		return
	}
	if col.dictIdx == nil {
		col.dictIdx = make(map[string]uint32, len(col.dict))
		for j, d := range col.dict {
			col.dictIdx[d] = uint32(j)
		}
	}
	j, ok := col.dictIdx[string(v)]
	if !ok {
		s := string(v)
		j = uint32(len(col.dict))
		col.dict = append(col.dict, s)
		col.dictIdx[s] = j
	}
	col.syms[i] = symDict + j
	col.lastDict = j + 1
}

// slice returns points [i, j) of c, sharing c's memory.
func (c *chunkData) slice(i, j int) *chunkData {
	s := &chunkData{ts: c.ts[i:j], cols: make([]chunkCol, len(c.cols))}
	for k, col := range c.cols {
		s.cols[k] = chunkCol{name: col.name, syms: col.syms[i:j], dict: col.dict}
		if col.nums != nil {
			s.cols[k].nums = col.nums[i:j]
		}
	}
	return s
}

// encoder holds scratch space, so that a writer encoding chunk after
// chunk does not allocate for each.
type encoder struct {
	body, runs, bits []byte
	nums, all        []float64
	ms, d, dod       []int64
}

// encodeChunk appends the encoding of c to dst.
func encodeChunk(dst []byte, c *chunkData) []byte {
	var e encoder
	return e.chunk(dst, c)
}

// chunk appends the encoding of c to dst.
func (e *encoder) chunk(dst []byte, c *chunkData) []byte {
	dst = append(dst, chunkVersion)
	dst = binary.AppendUvarint(dst, uint64(len(c.ts)))
	dst = binary.AppendUvarint(dst, uint64(len(c.cols)))
	for i := range c.cols {
		dst = appendBytes(dst, []byte(c.cols[i].name))
	}
	w := bitWriter{b: e.bits[:0]}
	if len(c.ts) > 0 {
		w.bits(uint64(c.ts[0]), 64)
		e.dod = deltas(e.dod[:0], c.ts, true)
		var hist intHist
		for _, v := range e.dod {
			hist[intLen(v)]++
		}
		code, k, _ := colCost(&hist)
		w.bits(uint64(code), 1)
		w.column(e.dod, code, k)
	}
	e.bits = w.done()
	dst = appendBytes(dst, e.bits)
	for i := range c.cols {
		e.body = e.col(e.body[:0], &c.cols[i])
		dst = appendBytes(dst, e.body)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func (e *encoder) col(dst []byte, col *chunkCol) []byte {
	// Runs of symbols.
	runs := e.runs[:0]
	nruns := 0
	nums := e.nums[:0]
	defer func() { e.runs, e.nums = runs, nums }()
	for i := 0; i < len(col.syms); {
		j := i + 1
		for j < len(col.syms) && col.syms[j] == col.syms[i] {
			j++
		}
		runs = binary.AppendUvarint(runs, uint64(col.syms[i]))
		runs = binary.AppendUvarint(runs, uint64(j-i))
		nruns++
		if col.syms[i] == symNumber {
			nums = append(nums, col.nums[i:j]...)
		}
		i = j
	}
	dst = binary.AppendUvarint(dst, uint64(nruns))
	dst = append(dst, runs...)
	dst = binary.AppendUvarint(dst, uint64(len(col.dict)))
	for _, d := range col.dict {
		dst = appendBytes(dst, []byte(d))
	}
	if len(nums) == 0 {
		return append(dst, numNone)
	}
	// Decimals as integers when they are: smaller than XOR but for
	// numbers with many digits, where their deltas cost about as much.
	var ok bool
	var exp int
	if exp, e.ms, ok = decimals(e.ms[:0], nums); ok {
		e.d, e.dod = deltas(e.d[:0], e.ms, false), deltas(e.dod[:0], e.ms, true)
		var histD, histDoD intHist
		for i := range e.d {
			histD[intLen(e.d[i])]++
			histDoD[intLen(e.dod[i])]++
		}
		lo, hi := e.ms[0], e.ms[0]
		for _, m := range e.ms {
			lo, hi = min(lo, m), max(hi, m)
		}
		mode, k := decChoice(&histD, &histDoD, len(e.ms), lo, hi)
		w := bitWriter{b: e.bits[:0]}
		if mode == numDecRange {
			w.bits(zigzag(lo), 64)
			w.bits(uint64(k), 6)
			for _, m := range e.ms {
				w.bits(uint64(m-lo), k)
			}
		} else {
			d := e.d
			if mode == numDecDoD || mode == numDecDoDRice {
				d = e.dod
			}
			w.bits(zigzag(e.ms[0]), 64)
			w.column(d, modeCode(mode), k)
		}
		e.bits = w.done()
		if exp < 10 || len(e.bits) < xorSize(nums) {
			dst = append(dst, mode, byte(exp))
			return append(dst, e.bits...)
		}
	}
	dst = append(dst, numXOR)
	return append(dst, encodeXOR(nums)...)
}

// decChoice is the encoding of a column's n scaled decimals, given the
// intLen counts of their deltas and of their delta-of-deltas and the
// smallest and largest: the one of the fewest bits, and its k (for
// numDecRange, the offsets' width).
func decChoice(histD, histDoD *intHist, n int, lo, hi int64) (mode byte, k int) {
	c1, k1, h1 := colCost(histD)
	c2, k2, h2 := colCost(histDoD)
	mode, k, h := numDecDelta+2*c1, k1, h1
	if h2 < h1 {
		mode, k, h = numDecDoD+2*c2, k2, h2
	}
	if w := rangeWidth(lo, hi); 2*(6+n*w) < h {
		return numDecRange, w
	}
	return mode, k
}

// rangeWidth is the bits of the largest offset of numbers in [lo, hi]
// (scaled decimals: hi-lo < 2^54).
func rangeWidth(lo, hi int64) int { return 64 - bits.LeadingZeros64(uint64(hi-lo)) }

// modeCode is the integer code of a decimal number mode.
func modeCode(mode byte) byte {
	if mode == numDecDeltaRice || mode == numDecDoDRice {
		return codeRice
	}
	return codeInts
}

// xorSize is the size of encodeXOR(nums).
func xorSize(nums []float64) int { return len(encodeXOR(nums)) }

var pow10 = func() (p [16]float64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return
}()

// maxMantissa bounds scaled decimals so that they are exact in a float64
// and their deltas never overflow.
const maxMantissa = 1 << 53

// decimals returns the fewest decimals e (≤ 15) with which every number
// is float64(m)/10^e for an integer m, exactly, and the m (in ms[:0]).
func decimals(ms []int64, nums []float64) (int, []int64, bool) {
	e, raised := 0, 0
	ms = slices.Grow(ms[:0], len(nums))[:len(nums)]
	for i, v := range nums {
		for ; e < len(pow10); e++ {
			if m, ok := mantissa(v, e); ok {
				ms[i] = m
				break
			}
			raised = i
		}
		if e == len(pow10) {
			return 0, nil, false
		}
	}
	// The numbers before the last raise of e must still be exact with it.
	for i, v := range nums[:raised] {
		m, ok := mantissa(v, e)
		if !ok {
			return 0, nil, false
		}
		ms[i] = m
	}
	return e, ms, true
}

func mantissa(v float64, e int) (int64, bool) {
	s := v * pow10[e]
	if !(math.Abs(s) < maxMantissa) {
		return 0, false
	}
	m := int64(math.Round(s))
	return m, math.Float64bits(float64(m)/pow10[e]) == math.Float64bits(v)
}

// deltas returns the differences of consecutive values (after the first),
// or with dod the differences of those differences (the first delta
// taken against zero), appended to out.
func deltas(out, vs []int64, dod bool) []int64 {
	var delta int64
	for i := 1; i < len(vs); i++ {
		d := vs[i] - vs[i-1]
		if dod {
			out = append(out, d-delta)
			delta = d
		} else {
			out = append(out, d)
		}
	}
	return out
}

// undelta reverses deltas, from the first value v0.
func undelta(dst []int64, v0 int64, ds []int64, dod bool) []int64 {
	dst = append(dst, v0)
	var delta int64
	for _, d := range ds {
		if dod {
			delta += d
			v0 += delta
		} else {
			v0 += d
		}
		dst = append(dst, v0)
	}
	return dst
}

// encodeXOR is Gorilla's float encoding (Pelkonen et al., VLDB 2015).
func encodeXOR(nums []float64) []byte {
	var x xorWriter
	for _, v := range nums {
		x.add(v)
	}
	return x.w.done()
}

// xorWriter writes encodeXOR's encoding one number at a time.
type xorWriter struct {
	w     bitWriter
	n     int // numbers written
	prev  uint64
	lead  int // -1 until set
	trail int
}

func (x *xorWriter) add(v float64) {
	cur := math.Float64bits(v)
	if x.n == 0 {
		x.w.bits(cur, 64)
		x.prev, x.lead, x.n = cur, -1, 1
		return
	}
	x.n++
	d := cur ^ x.prev
	x.prev = cur
	if d == 0 {
		x.w.bit(false)
		return
	}
	x.w.bit(true)
	l, t := min(bits.LeadingZeros64(d), 31), bits.TrailingZeros64(d)
	if x.lead >= 0 && l >= x.lead && t >= x.trail {
		x.w.bit(false)
		x.w.bits(d>>x.trail, 64-x.lead-x.trail)
		return
	}
	x.lead, x.trail = l, t
	sig := 64 - l - t
	x.w.bit(true)
	x.w.bits(uint64(l), 5)
	x.w.bits(uint64(sig&63), 6) // 64 is written as 0
	x.w.bits(d>>t, sig)
}

// chunkReader reads an encoded chunk.
type chunkReader struct {
	b   []byte
	err bool
}

func (r *chunkReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = true
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *chunkReader) bytes() []byte {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = true
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// decodeChunk decodes a chunk. With want non-nil, only the columns it
// names are decoded (others are left out of the result).
func decodeChunk(b []byte, want func(name string) bool) (*chunkData, error) {
	if len(b) > 0 && b[0] > chunkVersion {
		return nil, errChunkNewer
	}
	if len(b) == 0 || b[0] < 1 || b[0] > chunkVersion {
		return nil, errChunkCorrupt
	}
	version := b[0]
	r := chunkReader{b: b[1:]}
	n, ncols := r.uvarint(), r.uvarint()
	if r.err || n == 0 || n > maxChunkDecodePoints || ncols > maxChunkDecodeCells/n {
		return nil, errChunkCorrupt
	}
	names := make([]string, 0, min(ncols, 64))
	for range ncols {
		names = append(names, string(r.bytes()))
		if r.err {
			return nil, errChunkCorrupt
		}
	}
	br := bitReader{b: r.bytes()}
	if r.err {
		return nil, errChunkCorrupt
	}
	t0, err := br.bits(64)
	if err != nil {
		return nil, err
	}
	code := byte(codeInts)
	if version >= 2 {
		bit, err := br.bits(1)
		if err != nil {
			return nil, err
		}
		code = byte(bit)
	}
	ds, err := br.column(make([]int64, 0, n-1), int(n-1), code)
	if err != nil {
		return nil, err
	}
	c := &chunkData{ts: undelta(make([]int64, 0, n), int64(t0), ds, true)}
	if len(br.b) != (br.pos+7)/8 {
		return nil, errChunkCorrupt
	}
	for _, name := range names {
		body := r.bytes()
		if r.err {
			return nil, errChunkCorrupt
		}
		if want != nil && !want(name) {
			continue
		}
		col, err := decodeCol(body, int(n), version)
		if err != nil {
			return nil, err
		}
		col.name = name
		c.cols = append(c.cols, col)
	}
	if len(r.b) != 0 {
		return nil, errChunkCorrupt
	}
	return c, nil
}

func decodeCol(b []byte, n int, version byte) (chunkCol, error) {
	r := chunkReader{b: b}
	col := chunkCol{syms: make([]uint32, 0, n)}
	nruns := r.uvarint()
	if r.err || nruns > uint64(n) {
		return col, errChunkCorrupt
	}
	nnums := 0
	var maxSym uint64
	for range nruns {
		sym, run := r.uvarint(), r.uvarint()
		if r.err || sym > math.MaxUint32 || run == 0 || run > uint64(n-len(col.syms)) {
			return col, errChunkCorrupt
		}
		maxSym = max(maxSym, sym)
		for range run {
			col.syms = append(col.syms, uint32(sym))
		}
		if sym == symNumber {
			nnums += int(run)
		}
	}
	if len(col.syms) != n {
		return col, errChunkCorrupt
	}
	ndict := r.uvarint()
	if r.err || ndict > uint64(len(r.b)) {
		return col, errChunkCorrupt
	}
	col.dict = make([]string, 0, ndict)
	for range ndict {
		col.dict = append(col.dict, string(r.bytes()))
		if r.err {
			return col, errChunkCorrupt
		}
	}
	if maxSym >= symDict && maxSym-symDict >= ndict {
		return col, errChunkCorrupt
	}
	if len(r.b) == 0 {
		return col, errChunkCorrupt
	}
	mode := r.b[0]
	r.b = r.b[1:]
	nums := make([]float64, 0, nnums)
	var err error
	switch {
	case mode == numNone && nnums == 0:
		if len(r.b) != 0 {
			return col, errChunkCorrupt
		}
	case mode == numXOR && nnums > 0:
		nums, err = decodeXOR(r.b, nums, nnums)
	case (mode == numDecDelta || mode == numDecDoD || version >= 2 && (mode == numDecDeltaRice || mode == numDecDoDRice || mode == numDecRange)) &&
		nnums > 0 && len(r.b) > 0 && int(r.b[0]) < len(pow10):
		nums, err = decodeDecimal(r.b[1:], nums, nnums, int(r.b[0]), mode)
	default:
		err = errChunkCorrupt
	}
	if err != nil {
		return col, err
	}
	col.nums = make([]float64, n)
	j := 0
	for i, s := range col.syms {
		if s == symNumber {
			col.nums[i] = nums[j]
			j++
		}
	}
	return col, nil
}

func decodeDecimal(b []byte, nums []float64, n, e int, mode byte) ([]float64, error) {
	r := bitReader{b: b}
	z, err := r.bits(64)
	if err != nil {
		return nil, err
	}
	if mode == numDecRange {
		w, err := r.bits(6)
		if err != nil {
			return nil, err
		}
		lo := unzigzag(z)
		for range n {
			v, err := r.bits(int(w))
			if err != nil {
				return nil, err
			}
			nums = append(nums, float64(lo+int64(v))/pow10[e])
		}
		if len(b) != (r.pos+7)/8 {
			return nil, errChunkCorrupt
		}
		return nums, nil
	}
	ds, err := r.column(make([]int64, 0, n-1), n-1, modeCode(mode))
	if err != nil {
		return nil, err
	}
	dod := mode == numDecDoD || mode == numDecDoDRice
	for _, m := range undelta(make([]int64, 0, n), unzigzag(z), ds, dod) {
		nums = append(nums, float64(m)/pow10[e])
	}
	if len(b) != (r.pos+7)/8 {
		return nil, errChunkCorrupt
	}
	return nums, nil
}

func decodeXOR(b []byte, nums []float64, n int) ([]float64, error) {
	r := bitReader{b: b}
	var prev uint64
	lead, trail := -1, 0
	for i := range n {
		if i == 0 {
			v, err := r.bits(64)
			if err != nil {
				return nil, err
			}
			prev = v
			nums = append(nums, math.Float64frombits(v))
			continue
		}
		changed, err := r.bit()
		if err != nil {
			return nil, err
		}
		if changed {
			fresh, err := r.bit()
			if err != nil {
				return nil, err
			}
			if fresh {
				l, err := r.bits(5)
				if err != nil {
					return nil, err
				}
				sig, err := r.bits(6)
				if err != nil {
					return nil, err
				}
				if sig == 0 {
					sig = 64
				}
				if int(l)+int(sig) > 64 {
					return nil, errChunkCorrupt
				}
				lead, trail = int(l), 64-int(l)-int(sig)
			} else if lead < 0 {
				return nil, errChunkCorrupt
			}
			x, err := r.bits(64 - lead - trail)
			if err != nil {
				return nil, err
			}
			prev ^= x << trail
		}
		nums = append(nums, math.Float64frombits(prev))
	}
	if len(b) != (r.pos+7)/8 {
		return nil, errChunkCorrupt
	}
	return nums, nil
}
