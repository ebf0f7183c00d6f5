package devices

import (
	"context"
	"database/sql"
	"fmt"
	"time"
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
	// so that history and last values commit together). A device that is
	// not registered is skipped.
	UpdateLastValues(ctx context.Context, tx *sql.Tx, lasts []LastValue) error
	// EachLastValues calls fn with every device's last values (a JSON
	// object), for the names each device has stored.
	EachLastValues(ctx context.Context, fn func(id string, obj []byte)) error
}

// UpdateLastValues implements LastValues.
func (r *Registry) UpdateLastValues(ctx context.Context, tx *sql.Tx, lasts []LastValue) error {
	st, err := tx.PrepareContext(ctx,
		`UPDATE devices SET last_values = json_patch(COALESCE(last_values, '{}'), ?), last_seen = ? WHERE id = ?`)
	if err != nil {
		return fmt.Errorf("last values: prepare: %w", err)
	}
	defer st.Close()
	for _, l := range lasts {
		if _, err := st.ExecContext(ctx, string(l.Values), fmtTime(l.Seen), l.Device); err != nil {
			return fmt.Errorf("last values of %s: %w", l.Device, err)
		}
	}
	return nil
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
		fn(id, obj)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("last values: %w", err)
	}
	return nil
}
