package devices

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// LastValue is one device's latest values from a telemetry batch: a
// compact JSON object merged into the device's last values, and when the
// latest of its points arrived (its last seen).
type LastValue struct {
	Device string
	Values []byte
	Seen   time.Time
}

// LastValues is where the telemetry store keeps each device's latest
// values and last seen: the registry, which owns the device rows. The
// telemetry store calls it and never writes the registry's table.
type LastValues interface {
	// UpdateLastValues merges each value into its device's last values
	// and sets its last seen, in tx (the telemetry batch's transaction,
	// so that history and last values commit together). lasts holds one
	// value a device. A device that is not registered is skipped.
	UpdateLastValues(ctx context.Context, tx *sql.Tx, lasts []LastValue) error
	// EachLastValues calls fn with every device's last values (a JSON
	// object), for the names each device has stored.
	EachLastValues(ctx context.Context, fn func(id string, obj []byte)) error
}

// lastValuesRows is how many devices one UPDATE of last values sets.
const lastValuesRows = 64

// UpdateLastValues implements LastValues: up to lastValuesRows devices a
// statement (each statement costs far more than its rows).
func (r *Registry) UpdateLastValues(ctx context.Context, tx *sql.Tx, lasts []LastValue) error {
	if len(lasts) == 0 {
		return nil
	}
	if r.shared() {
		// Every node updates device rows in id order, so two nodes'
		// transactions never wait for each other in a cycle.
		lasts = slices.Clone(lasts)
		slices.SortFunc(lasts, func(a, b LastValue) int { return strings.Compare(a.Device, b.Device) })
	}
	var full *sql.Stmt
	if len(lasts) >= lastValuesRows {
		var err error
		if full, err = tx.PrepareContext(ctx, lastValuesSQL(lastValuesRows)); err != nil {
			return fmt.Errorf("last values: prepare: %w", err)
		}
		defer full.Close()
	}
	args := make([]any, 0, 3*min(len(lasts), lastValuesRows))
	for len(lasts) > 0 {
		n := min(len(lasts), lastValuesRows)
		args = args[:0]
		for _, l := range lasts[:n] {
			args = append(args, l.Device, string(l.Values), fmtTime(l.Seen))
		}
		var err error
		if n == lastValuesRows {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, lastValuesSQL(n), args...)
		}
		if err != nil {
			return fmt.Errorf("last values of %d devices from %s: %w", n, lasts[0].Device, err)
		}
		lasts = lasts[n:]
	}
	return nil
}

// lastValuesSQL merges rows devices' values (id, JSON patch, last seen)
// into their last values; a device that is not registered matches no row.
func lastValuesSQL(rows int) string {
	b := make([]byte, 0, 256+10*rows)
	b = append(b, "UPDATE devices SET last_values = json_patch(COALESCE(devices.last_values, '{}'), v.column2), last_seen = v.column3 FROM (VALUES "...)
	for i := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "(?,?,?)"...)
	}
	b = append(b, ") AS v WHERE devices.id = v.column1"...)
	return string(b)
}

// EachLastValues implements LastValues.
func (r *Registry) EachLastValues(ctx context.Context, fn func(id string, obj []byte)) error {
	rows, err := r.db.R.QueryContext(ctx, `SELECT id, last_values FROM devices
		WHERE last_values IS NOT NULL AND json_valid(last_values) AND json_type(last_values) = 'object'`)
	if err != nil {
		return fmt.Errorf("last values: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var obj []byte
		if err := rows.Scan(&id, &obj); err != nil {
			return fmt.Errorf("last values: %w", err)
		}
		if r.db.Dialect == database.Postgres {
			// jsonb's text has spaces; fn reads a compact object.
			var b bytes.Buffer
			if json.Compact(&b, obj) != nil {
				continue
			}
			obj = b.Bytes()
		}
		fn(id, obj)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("last values: %w", err)
	}
	return nil
}
