package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// migrateRows is how many JSON-text chunks one migration transaction
// moves (each up to 512 points); a test makes it smaller.
const migrateRows = 256

var migrateRowsTest = migrateRows

// errMigrationStopped is the test hook's stop (TelemetryOptions.migrateStop).
var errMigrationStopped = errors.New("telemetry migration: stopped by test hook")

// migrateLegacy moves the history of earlier releases, JSON-text chunks
// in the table telemetry, into compressed chunks and rollups: each
// transaction converts a few hundred rows and deletes them, so a kill at
// any point loses nothing and the next start carries on where it
// stopped. When the table is empty it is dropped with its trigger.
func (t *Telemetry) migrateLegacy(ctx context.Context) error {
	if t.db.Dialect != database.SQLite {
		return nil // PostgreSQL never had the table
	}
	var n int
	if err := t.db.W.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'telemetry'`).Scan(&n); err != nil {
		return fmt.Errorf("telemetry migration: %w", err)
	}
	if n == 0 {
		return nil
	}
	start, logged := time.Now(), time.Now()
	var rows, points int64
	for txs := 1; ; txs++ {
		r, p, err := t.migrateStep(ctx)
		if err != nil {
			return err
		}
		rows += r
		points += p
		if r == 0 {
			break
		}
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			t.log.Info("telemetry: migrating history to compressed chunks", "points", points, "took", time.Since(start).Round(time.Second))
		}
		if t.opts.migrateStop > 0 && txs >= t.opts.migrateStop {
			return errMigrationStopped
		}
	}
	if _, err := t.db.W.ExecContext(ctx,
		`DROP TRIGGER IF EXISTS telemetry_device_deleted; DROP TABLE telemetry`); err != nil {
		return fmt.Errorf("telemetry migration: drop the old table: %w", err)
	}
	if rows > 0 {
		took := time.Since(start)
		t.log.Info("telemetry: history migrated to compressed chunks",
			"rows", rows, "points", points, "took", took,
			"points_per_second", int64(float64(points)/max(took.Seconds(), 1e-9)))
	}
	return nil
}

// migrateStep moves up to migrateRows rows in one transaction and returns
// how many rows and points it moved.
func (t *Telemetry) migrateStep(ctx context.Context) (rows, points int64, err error) {
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	defer tx.Rollback()
	rs, err := tx.QueryContext(ctx,
		`SELECT id, device_id, points FROM telemetry ORDER BY device_id, ts_min LIMIT ?`, migrateRowsTest)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	b, r := newChunkBuilder(t.db.Dialect), newRollups(true, t.db.Dialect)
	now := time.Now()
	var ids []int64
	var compact bytes.Buffer
	for rs.Next() {
		var id int64
		var device string
		var text []byte
		if err := rs.Scan(&id, &device, &text); err != nil {
			rs.Close()
			return 0, 0, fmt.Errorf("telemetry migration: %w", err)
		}
		var pts [][2]json.RawMessage
		if err := json.Unmarshal(text, &pts); err != nil {
			rs.Close()
			return 0, 0, fmt.Errorf("telemetry migration: row %d: %w", id, err)
		}
		for _, p := range pts {
			ts, err := strconv.ParseInt(string(p[0]), 10, 64)
			compact.Reset()
			if err == nil {
				err = json.Compact(&compact, p[1])
			}
			if err != nil || compact.Len() < 2 || compact.Bytes()[0] != '{' {
				rs.Close()
				return 0, 0, fmt.Errorf("telemetry migration: row %d: bad point", id)
			}
			b.add(device, ts, compact.Bytes(), now, r)
			points++
		}
		ids = append(ids, id)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	if len(ids) == 0 {
		return 0, 0, nil
	}
	if err := b.write(ctx, tx); err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	if err := r.write(ctx, tx); err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	r.written(true)
	del, err := tx.PrepareContext(ctx, `DELETE FROM telemetry WHERE id = ?`)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	defer del.Close()
	for _, id := range ids {
		if _, err := del.ExecContext(ctx, id); err != nil {
			return 0, 0, fmt.Errorf("telemetry migration: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("telemetry migration: %w", err)
	}
	return int64(len(ids)), points, nil
}
