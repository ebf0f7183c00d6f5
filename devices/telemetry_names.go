package devices

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
)

// MaxDeviceMetrics is the most distinct metric names one device keeps
// (SPEC §6). Once a device has that many, a sample's metrics with new
// names are refused (counted) and its known metrics are stored as usual;
// its last_values can hence not grow past it either.
const MaxDeviceMetrics = 1024

// metricNames remembers the metric names each device has stored, as
// sorted 64-bit hashes (8 bytes a name, at most MaxDeviceMetrics a
// device), so that Add decides without SQLite. It starts from the keys of
// the devices' last_values, which hold every name a device ever stored.
//
// A device publishing the keys of its last fully known sample again (what
// a device usually does) passes without a lock: per holds each device's
// *deviceNames (sync.Map: reads take no lock), whose memo of keys is
// known by the keys' hash, which the parser gives (Sample.keys), and read
// under a sequence count (keysMemo). Everything else (new keys, new
// names, refusals) takes mu. per is a deviceIndex, not a sync.Map: its
// lookup took about twice as long (2026-12-02).
type metricNames struct {
	seed maphash.Seed

	// mu serialises the changes of per, of each deviceNames' hs and
	// keys, and of versions.
	mu       sync.Mutex
	per      deviceIndex // device id → *deviceNames
	versions uint64      // the last keys version given
}

// deviceNames is one device's names: their sorted hashes, and the keys
// of the last sample all of whose names were known, so that the next
// one with the same keys (what a device usually sends) is let through
// without hashing each.
type deviceNames struct {
	id   string // the device's
	hs   []uint64
	keys []byte // per key: its length (2 bytes), its raw bytes
	// memo is the hash (keysHash) and version (metricNames.versions) of
	// keys, both 0 when keys is nil, read without mu.
	memo keysMemo
	// gone is set when the device is forgotten (deviceIndex.delete).
	gone atomic.Bool
	// tat is the device's value-rate bucket (valueRate.allow).
	tat atomic.Int64
	// notStored counts the device's samples the value rate refused since
	// the store opened, notStoredAt is when the last was (Unix ns; set
	// once a second at most), notStoredLogged is notStored at the last
	// log line of them (Telemetry.overRate).
	notStored, notStoredAt, notStoredLogged atomic.Int64
}

// deviceIndex maps device ids to their names. Readers look a device up
// without a lock in read, a map never changed once published; the
// devices added since (under metricNames.mu) are in dirty, and a device
// forgotten is marked gone in read. The lookups under the lock that read
// missed are counted, and once they reach an eighth of read's size (or
// dirty's, if larger) read is made again from both: so a copy of n
// devices follows at least n/8 lookups, and a new device is found without
// the lock soon after it first reports.
type deviceIndex struct {
	read   atomic.Pointer[map[string]*deviceNames]
	dirty  map[string]*deviceNames
	misses int
	gone   int // entries of read marked gone
}

// fast returns device's names if read has them, without a lock; nil
// means: ask get, under metricNames.mu.
func (x *deviceIndex) fast(device string) *deviceNames {
	if r := x.read.Load(); r != nil {
		if dn := (*r)[device]; dn != nil && !dn.gone.Load() {
			return dn
		}
	}
	return nil
}

// get returns device's names, or nil (under metricNames.mu).
func (x *deviceIndex) get(device string) *deviceNames {
	if dn := x.fast(device); dn != nil {
		return dn
	}
	if len(x.dirty) == 0 && x.gone == 0 {
		return nil // read is all there is
	}
	dn := x.dirty[device]
	x.misses++
	if r := x.read.Load(); r == nil || x.misses >= max(len(*r)/8, len(x.dirty)) {
		x.publish()
	}
	return dn
}

// store adds device's names (under metricNames.mu; the device has none).
func (x *deviceIndex) store(device string, dn *deviceNames) {
	if x.dirty == nil {
		x.dirty = make(map[string]*deviceNames)
	}
	x.dirty[device] = dn
}

// delete forgets device's names (under metricNames.mu).
func (x *deviceIndex) delete(device string) {
	if _, ok := x.dirty[device]; ok {
		delete(x.dirty, device)
		return
	}
	if dn := x.fast(device); dn != nil {
		dn.gone.Store(true)
		x.gone++
	}
}

// publish makes read anew from read and dirty (under metricNames.mu).
func (x *deviceIndex) publish() {
	var old map[string]*deviceNames
	if r := x.read.Load(); r != nil {
		old = *r
	}
	r := make(map[string]*deviceNames, len(old)-x.gone+len(x.dirty))
	for id, dn := range old {
		if !dn.gone.Load() {
			r[id] = dn
		}
	}
	for id, dn := range x.dirty {
		r[id] = dn
	}
	x.read.Store(&r)
	x.dirty, x.misses, x.gone = nil, 0, 0
}

// keysMemo is a device's memo's hash and version, set under
// metricNames.mu and read without it: seq is odd while they change, so a
// reader that sees the same even seq before and after read both of one
// memo (a sequence lock; the next memo is the next version, never
// reused).
type keysMemo struct {
	seq, hash, version atomic.Uint64
}

// get returns the version of the memo if its hash is hash, else 0.
func (k *keysMemo) get(hash uint64) uint64 {
	seq := k.seq.Load()
	if seq&1 != 0 || k.hash.Load() != hash {
		return 0
	}
	v := k.version.Load()
	if k.seq.Load() != seq {
		return 0
	}
	return v
}

// set sets the memo (under metricNames.mu).
func (k *keysMemo) set(hash, version uint64) {
	k.seq.Add(1)
	k.hash.Store(hash)
	k.version.Store(version)
	k.seq.Add(1)
}

// maxKeysMemo is the longest keys memo kept per device.
const maxKeysMemo = 1024

func newMetricNames() *metricNames {
	return &metricNames{seed: maphash.MakeSeed()}
}

// device returns device's names, or nil (under mu).
func (m *metricNames) device(device string) *deviceNames { return m.per.get(device) }

// lookup returns device's names, or nil, without holding mu when the
// lock-free index has them.
func (m *metricNames) lookup(device string) *deviceNames {
	if dn := m.per.fast(device); dn != nil {
		return dn
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.per.get(device)
}

// load reads every device's known names from its last values.
func (m *metricNames) load(ctx context.Context, last LastValues) error {
	err := last.EachLastValues(ctx, func(id string, obj []byte) {
		if len(obj) < 2 {
			return
		}
		var hs []uint64
		eachMember(obj, func(k, _ []byte) { hs = append(hs, maphash.Bytes(m.seed, k)) })
		slices.Sort(hs)
		m.mu.Lock()
		m.per.store(id, &deviceNames{id: id, hs: slices.Compact(hs)})
		m.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("telemetry: metric names: %w", err)
	}
	m.mu.Lock()
	m.per.publish()
	m.mu.Unlock()
	return nil
}

// filter returns obj (a compact object as ParseTelemetry writes it) with
// only the metrics device may store, recording the new names that fit,
// and the number of metrics refused; nil when none is left.
func (m *metricNames) filter(device string, obj []byte) ([]byte, int) {
	out, refused, _ := m.filterKeys(device, obj, 0)
	return out, refused
}

// filterKeys is filter, and also returns the version of obj's keys: two
// samples with the same version, other than 0, have the same keys in the
// same order (then the writer need not merge their last values member
// by member). A version names one memo of one device: it is never given
// to other keys. hash is keysHash(obj) (Sample.keys), or 0 if not known:
// a sample whose hash is its device's memo's passes without a lock and
// without reading its keys. (Keys are told apart by their 64-bit hash
// there, as names are in hs: with a seed drawn at start-up, two key lists
// of one device colliding is a chance of about 2^-64 a sample.)
func (m *metricNames) filterKeys(device string, obj []byte, hash uint64) (_ []byte, refused int, version uint64) {
	out, refused, version, _ := m.admit(device, obj, hash)
	return out, refused, version
}

// admit is filterKeys, and also returns device's names when obj is not
// refused whole (Add queues them with the point: the writer groups a
// batch by them, without reading each point's device id).
func (m *metricNames) admit(device string, obj []byte, hash uint64) (_ []byte, refused int, version uint64, _ *deviceNames) {
	if hash != 0 {
		if dn := m.per.fast(device); dn != nil {
			if v := dn.memo.get(hash); v != 0 {
				return obj, 0, v, dn
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	dn := m.device(device)
	if dn != nil && dn.keys != nil && hash == 0 && sameKeys(obj, dn.keys) {
		return obj, 0, dn.memo.version.Load(), dn
	}
	var hs []uint64
	if dn != nil {
		hs = dn.hs
	}
	var out []byte
	kept, added := 0, false
	eachMember(obj, func(k, v []byte) {
		h := maphash.Bytes(m.seed, k)
		i, known := slices.BinarySearch(hs, h)
		if !known && len(hs) < MaxDeviceMetrics {
			hs = slices.Insert(hs, i, h)
			known, added = true, true
		}
		if !known {
			if refused == 0 {
				// The first refusal: copy what was kept so far.
				out = make([]byte, 0, len(obj))
				out = append(out, '{')
				n := 0
				eachMember(obj, func(k2, v2 []byte) {
					if n < kept {
						out = appendMember(out, n, k2, v2)
					}
					n++
				})
			}
			refused++
			return
		}
		if refused > 0 {
			out = appendMember(out, kept, k, v)
		}
		kept++
	})
	if dn == nil && (added || refused == 0) {
		dn = &deviceNames{id: device}
		m.per.store(device, dn)
	}
	if added {
		dn.hs = hs
	}
	switch {
	case refused == 0:
		dn.keys = appendKeys(dn.keys[:0], obj)
		if dn.keys == nil {
			dn.memo.set(0, 0)
			return obj, 0, 0, dn
		}
		if hash == 0 {
			hash = keysHash(obj)
		}
		m.versions++
		dn.memo.set(hash, m.versions)
		return obj, 0, m.versions, dn
	case kept == 0:
		return nil, refused, 0, nil
	}
	return append(out, '}'), refused, 0, dn
}

// appendMember appends "k":v to an object being built, after a comma
// unless it is the object's first member (i == 0).
func appendMember(out []byte, i int, k, v []byte) []byte {
	if i > 0 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, k...)
	out = append(out, '"', ':')
	return append(out, v...)
}

// appendKeys appends the memo of obj's keys to dst; nil when it would be
// longer than maxKeysMemo.
func appendKeys(dst, obj []byte) []byte {
	fits := true
	eachMember(obj, func(k, _ []byte) {
		if fits = fits && len(dst)+2+len(k) <= maxKeysMemo; fits {
			dst = append(dst, byte(len(k)>>8), byte(len(k)))
			dst = append(dst, k...)
		}
	})
	if !fits {
		return nil
	}
	return dst
}

// sameKeys reports whether obj (a compact object as ParseTelemetry
// writes it) has exactly the keys of the memo keys, in the same order.
func sameKeys(obj, keys []byte) bool {
	j := 0
	for i := 1; i < len(obj)-1; i++ {
		kEnd := endOfString(obj, i)
		k := obj[i+1 : kEnd-1]
		if len(keys)-j < 2 {
			return false
		}
		n := int(keys[j])<<8 | int(keys[j+1])
		j += 2
		if n != len(k) || len(keys)-j < n || string(keys[j:j+n]) != string(k) {
			return false
		}
		j += n
		i = kEnd + 1 // ':'
		if obj[i] == '"' {
			i = endOfString(obj, i)
		} else {
			for i < len(obj)-1 && obj[i] != ',' {
				i++
			}
		}
	}
	return j == len(keys)
}

// forget drops a device's names (it was deleted: one registered again
// under its id starts clean).
func (m *metricNames) forget(device string) {
	m.mu.Lock()
	m.per.delete(device)
	m.mu.Unlock()
}

// keysSeed seeds keysHash; drawn at start-up.
var keysSeed = maphash.MakeSeed()

// keysHash is a hash of the raw keys of obj (a compact object as
// ParseTelemetry writes it), in order; never 0 (which says "no hash"):
// the seeded maphash of each key's length (2 bytes) and bytes, one after
// the other.
func keysHash(obj []byte) uint64 {
	var h keysHasher
	eachMember(obj, func(k, _ []byte) { h.add(k) })
	return h.sum(obj)
}

// keysHasher makes keysHash one key at a time (compactObject adds the
// names as it reads them), in one call to maphash for a sample's usual
// few keys: they are gathered in buf, a byte at a time (they are short).
type keysHasher struct {
	buf  [128]byte
	n    int
	over bool // the keys did not fit in buf
}

func (h *keysHasher) add(k []byte) {
	if h.over || h.n+2+len(k) > len(h.buf) {
		h.over = true
		return
	}
	h.buf[h.n], h.buf[h.n+1] = byte(len(k)>>8), byte(len(k))
	dst := h.buf[h.n+2 : h.n+2+len(k)]
	for i := range dst {
		dst[i] = k[i]
	}
	h.n += 2 + len(k)
}

// sum returns the hash of the keys added, which are obj's.
func (h *keysHasher) sum(obj []byte) uint64 {
	if !h.over {
		return max(maphash.Bytes(keysSeed, h.buf[:h.n]), 1)
	}
	// Written to a maphash.Hash, the same bytes hash the same.
	var mh maphash.Hash
	mh.SetSeed(keysSeed)
	eachMember(obj, func(k, _ []byte) {
		mh.Write([]byte{byte(len(k) >> 8), byte(len(k))})
		mh.Write(k)
	})
	return max(mh.Sum64(), 1)
}
