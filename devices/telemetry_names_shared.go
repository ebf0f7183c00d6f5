package devices

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// On a database the nodes of a cluster share, each node's metricNames
// knows the names its own writer stored and those the database held when
// it started: a device that sent new names through another node since
// would get MaxDeviceMetrics more here. So when a device connects to this
// node (Registry.OnOnline), its names are read again from its last values
// (which hold every name it ever stored) and merged with this node's:
// a device's telemetry goes through the node it is connected to, so the
// cap holds across the cluster.

// refreshQueue bounds the devices waiting for their names to be read
// again; beyond it a connecting device keeps this node's view (a
// reconnection storm must not become a storm of queries).
const refreshQueue = 4096

// startNameRefresh starts the goroutine that reads names again (only on
// PostgreSQL: a node alone on SQLite has every name it stored).
func (t *Telemetry) startNameRefresh() {
	if t.db.Dialect != database.Postgres || t.last == nil {
		return
	}
	t.refresh = make(chan string, refreshQueue)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			select {
			case <-t.stop:
				return
			case id := <-t.refresh:
				if err := t.refreshNames(id); err != nil {
					t.log.Warn("telemetry: reading a device's metric names again", "device", id, "error", err)
				}
			}
		}
	}()
}

// RefreshNames has device's metric names read again from the database
// shared with other nodes, soon (not on the caller's goroutine; it never
// blocks). A no-op on SQLite. Give it to Registry.OnOnline.
func (t *Telemetry) RefreshNames(device string) {
	if t.refresh == nil {
		return
	}
	select {
	case t.refresh <- device:
	default:
	}
}

// refreshNames reads device's last values and adds their names to the
// ones this node knows.
func (t *Telemetry) refreshNames(device string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var obj []byte
	err := t.db.R.QueryRowContext(ctx, `SELECT last_values FROM devices WHERE id = ? AND last_values IS NOT NULL`, device).Scan(&obj)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("last values of %s: %w", device, err)
	}
	var b bytes.Buffer
	if json.Compact(&b, obj) != nil || b.Len() < 2 || b.Bytes()[0] != '{' {
		return nil
	}
	t.names.merge(device, b.Bytes())
	return nil
}

// merge adds the names of obj (a compact object) to device's.
func (m *metricNames) merge(device string, obj []byte) {
	var hs []uint64
	eachMember(obj, func(k, _ []byte) { hs = append(hs, maphash.Bytes(m.seed, k)) })
	m.mu.Lock()
	defer m.mu.Unlock()
	dn := m.device(device)
	if dn == nil {
		dn = &deviceNames{id: device}
		m.per.store(device, dn)
	}
	// Names are only added: the keys memo stays right.
	hs = append(hs, dn.hs...)
	slices.Sort(hs)
	dn.hs = slices.Compact(hs)
}

// OnOnline calls f with each device that connects to this node (as the
// broker records its presence); f runs on the connecting client's
// goroutine and must not block.
func (r *Registry) OnOnline(f func(id string)) { r.onOnline.Store(&f) }
