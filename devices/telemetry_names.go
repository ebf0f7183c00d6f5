package devices

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
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
type metricNames struct {
	seed maphash.Seed

	// mu guards per and versions.
	mu       sync.Mutex
	per      map[string]*deviceNames
	versions uint64 // the last keys version given
}

// deviceNames is one device's names: their sorted hashes, and the keys
// of the last sample all of whose names were known, so that the next
// one with the same keys (what a device usually sends) is let through
// without hashing each.
type deviceNames struct {
	hs      []uint64
	keys    []byte // per key: its length (2 bytes), its raw bytes
	version uint64 // of keys (metricNames.versions); 0 when keys is nil
}

// maxKeysMemo is the longest keys memo kept per device.
const maxKeysMemo = 1024

func newMetricNames() *metricNames {
	return &metricNames{seed: maphash.MakeSeed(), per: map[string]*deviceNames{}}
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
		m.per[id] = &deviceNames{hs: slices.Compact(hs)}
	})
	if err != nil {
		return fmt.Errorf("telemetry: metric names: %w", err)
	}
	return nil
}

// filter returns obj (a compact object as ParseTelemetry writes it) with
// only the metrics device may store, recording the new names that fit,
// and the number of metrics refused; nil when none is left.
func (m *metricNames) filter(device string, obj []byte) ([]byte, int) {
	out, refused, _ := m.filterKeys(device, obj)
	return out, refused
}

// filterKeys is filter, and also returns the version of obj's keys: two
// samples with the same version, other than 0, have the same keys in the
// same order (then the writer need not merge their last values member
// by member). A version names one memo of one device: it is never given
// to other keys.
func (m *metricNames) filterKeys(device string, obj []byte) (_ []byte, refused int, version uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dn := m.per[device]
	if dn != nil && dn.keys != nil && sameKeys(obj, dn.keys) {
		return obj, 0, dn.version
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
		dn = &deviceNames{}
		m.per[device] = dn
	}
	if added {
		dn.hs = hs
	}
	switch {
	case refused == 0:
		dn.keys, dn.version = appendKeys(dn.keys[:0], obj), 0
		if dn.keys != nil {
			m.versions++
			dn.version = m.versions
		}
		return obj, 0, dn.version
	case kept == 0:
		return nil, refused, 0
	}
	return append(out, '}'), refused, 0
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
	delete(m.per, device)
	m.mu.Unlock()
}
