package simulator

import (
	"math/bits"
	"sync"
	"time"
)

// histogram is a log-linear latency histogram: exact below 64 ns, then 32
// buckets per power of two (about 3% resolution), up to about 18 minutes.
// Memory is fixed however many samples it holds.
type histogram struct {
	mu     sync.Mutex // mu guards the fields below
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

const (
	histSubBits = 5
	histMaxExp  = 40 // values are capped at 2^40 ns
	histBuckets = (histMaxExp-1-histSubBits)<<histSubBits + 2<<histSubBits
)

func histIndex(v int64) int {
	if v < 0 {
		v = 0
	}
	u := min(uint64(v), 1<<histMaxExp-1)
	if u < 2<<histSubBits {
		return int(u)
	}
	shift := bits.Len64(u) - 1 - histSubBits
	return shift<<histSubBits + int(u>>shift)
}

// histValue is the middle of bucket i.
func histValue(i int) int64 {
	if i < 2<<histSubBits {
		return int64(i)
	}
	shift := i>>histSubBits - 1
	mant := int64(i&(1<<histSubBits-1) + 1<<histSubBits)
	return mant<<shift + (int64(1)<<shift)/2
}

// record adds one latency.
func (h *histogram) record(d time.Duration) {
	h.mu.Lock()
	h.counts[histIndex(int64(d))]++
	h.n++
	h.max = max(h.max, int64(d))
	h.mu.Unlock()
}

// merge adds o's samples to h.
func (h *histogram) merge(o *histogram) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the latency below which q of the samples fall.
func (h *histogram) quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(histValue(i), h.max))
		}
	}
	return time.Duration(h.max)
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func (h *histogram) summary() Latency {
	ms := func(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }
	h.mu.Lock()
	maxv := time.Duration(h.max)
	h.mu.Unlock()
	return Latency{P50: ms(h.quantile(0.5)), P90: ms(h.quantile(0.9)), P99: ms(h.quantile(0.99)), Max: ms(maxv)}
}
