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

	// mu guards per.
	mu  sync.Mutex
	per map[string][]uint64
}

func newMetricNames() *metricNames {
	return &metricNames{seed: maphash.MakeSeed(), per: map[string][]uint64{}}
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
		m.per[id] = slices.Compact(hs)
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
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.per[device]
	var out []byte
	refused, kept, added := 0, 0, false
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
	if added {
		m.per[device] = hs
	}
	switch {
	case refused == 0:
		return obj, 0
	case kept == 0:
		return nil, refused
	}
	return append(out, '}'), refused
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

// forget drops a device's names (it was deleted: one registered again
// under its id starts clean).
func (m *metricNames) forget(device string) {
	m.mu.Lock()
	delete(m.per, device)
	m.mu.Unlock()
}
