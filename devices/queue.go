package devices

import "sync/atomic"

// byteBudget bounds the memory a write queue holds, beside its number of
// entries: a device sending large payloads fills the bytes long before
// the count. An entry takes its size when queued and gives it back once
// it is written (not when dequeued: a batch being written holds it too).
type byteBudget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes; false (nothing reserved) when that would pass
// the bound.
func (b *byteBudget) take(n int64) bool {
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

// give returns n bytes.
func (b *byteBudget) give(n int64) { b.used.Add(-n) }

// held returns the bytes reserved now.
func (b *byteBudget) held() int64 { return b.used.Load() }

// entryOverhead is what a queued entry costs besides its variable-length
// fields (struct, channel slot, string headers), for the byte bounds.
const entryOverhead = 128
