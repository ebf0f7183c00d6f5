package devices

import (
	"context"
	"database/sql"
)

// DeviceData is a store that keeps rows about the registry's devices
// (history, commands, twins) in tables of its own. The registry tells it
// of a device it deletes (Registry.Attach); no store's table has a
// trigger on another's.
//
// The store's rows are deleted in the transaction that deletes the
// device row, so a crash leaves either both or neither: never history
// that a device registered again under the id would inherit.
type DeviceData interface {
	// DeleteDeviceData deletes the device's rows within tx, the
	// registry's delete transaction. It must not commit tx.
	DeleteDeviceData(ctx context.Context, tx *sql.Tx, id string) error
	// DeviceDeleted is called once that transaction has committed, to
	// drop what the store holds in memory of the device.
	DeviceDeleted(id string)
}

// Attach makes the registry tell each store of the devices it deletes.
// Call it before the registry deletes any device (at start-up).
func (r *Registry) Attach(stores ...DeviceData) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.stores = append(r.stores, stores...)
}

var (
	_ DeviceData = (*Telemetry)(nil)
	_ DeviceData = (*Commands)(nil)
	_ DeviceData = (*Twins)(nil)
	_ LastValues = (*Registry)(nil)
)
