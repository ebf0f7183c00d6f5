package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// prune deletes points older than the retention, and rollups older than
// the rollup retention, every PruneInterval.
func (t *Telemetry) prune() {
	defer t.wg.Done()
	tick := time.NewTicker(t.opts.PruneInterval)
	defer tick.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-t.stop
		cancel()
	}()
	// The hour of the hourly rollups last pruned: rows of a new hour
	// expire once an hour.
	lastHour := int64(math.MinInt64)
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			n, err := t.PruneBefore(ctx, time.Now().Add(-t.opts.Retention))
			if err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune", "error", err)
			}
			if n > 0 {
				t.log.Debug("telemetry: pruned", "points", n)
			}
			cutoff := time.Now().Add(-t.opts.RollupRetention)
			err = t.pruneMinutesBefore(ctx, cutoff)
			if hour := expiredHour(cutoff); err == nil && hour != lastHour {
				if err = t.pruneHoursBefore(ctx, cutoff); err == nil {
					lastHour = hour
				}
			}
			if err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune rollups", "error", err)
			}
		}
	}
}

// expiredHour is the last hour whose hourly rollups a cutoff expires:
// those of hours that began before it.
func expiredHour(cutoff time.Time) int64 {
	return floorDiv(cutoff.UnixMilli()-1, time.Hour.Milliseconds())
}

// PruneBefore deletes the history rows whose points are all older than
// cutoff, folding their numbers into the per-minute rollups, PruneChunk
// rows per transaction, so that the batch writer gets the connection
// between chunks. It returns how many points it deleted.
func (t *Telemetry) PruneBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		rows, points, err := t.pruneChunk(ctx, cutoff)
		if err != nil {
			return total, err
		}
		total += points
		t.m.pruned.Add(float64(points))
		if rows < int64(t.opts.PruneChunk) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("telemetry prune: %w", err)
		}
	}
}

// pruneChunk moves up to PruneChunk expired rows into the minute rollups
// and deletes them, in one transaction, and returns how many rows and
// points went.
func (t *Telemetry) pruneChunk(ctx context.Context, cutoff time.Time) (rows, points int64, err error) {
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer tx.Rollback()
	q := `SELECT id, device_id, data FROM telemetry_chunks WHERE ts_max < ? ORDER BY ts_max LIMIT ?`
	if t.db.Dialect == database.Postgres {
		// Another node's pruner may be at the same rows: each row is
		// folded into the minute rollups by one of them only.
		q += ` FOR UPDATE SKIP LOCKED`
	}
	rs, err := tx.QueryContext(ctx, q, cutoff.UnixMilli(), t.opts.PruneChunk)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	r := newRollups(false, t.db.Dialect)
	now := time.Now()
	var ids []int64
	for rs.Next() {
		var id int64
		var device string
		var data []byte
		if err := rs.Scan(&id, &device, &data); err != nil {
			rs.Close()
			return 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
		ids = append(ids, id)
		c, err := decodeChunk(data, nil)
		if err != nil { // nothing to keep of it
			t.log.Error("telemetry prune: stored chunk does not decode", "device", device, "error", err)
			continue
		}
		points += int64(len(c.ts))
		for j := range c.cols {
			col := &c.cols[j]
			for i, ts := range c.ts {
				if col.syms[i] == symNumber {
					r.add(device, col.name, ts, col.nums[i], now)
				}
			}
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	if len(ids) == 0 {
		return 0, 0, nil
	}
	if err := r.write(ctx, tx); err != nil {
		return 0, 0, err
	}
	del, err := tx.PrepareContext(ctx, `DELETE FROM telemetry_chunks WHERE id = ?`)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer del.Close()
	for _, id := range ids {
		if _, err := del.ExecContext(ctx, id); err != nil {
			return 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	return int64(len(ids)), points, nil
}

// PruneRollupsBefore deletes the rollups of minutes and hours that began
// before cutoff, a few hundred rows per transaction.
func (t *Telemetry) PruneRollupsBefore(ctx context.Context, cutoff time.Time) error {
	if err := t.pruneMinutesBefore(ctx, cutoff); err != nil {
		return err
	}
	return t.pruneHoursBefore(ctx, cutoff)
}

// pruneMinutesBefore deletes the minute chunks of minutes before cutoff,
// by their index on ts_max.
func (t *Telemetry) pruneMinutesBefore(ctx context.Context, cutoff time.Time) error {
	return t.pruneRows(ctx,
		`DELETE FROM telemetry_1m WHERE id IN (SELECT id FROM telemetry_1m WHERE ts_max < ? ORDER BY ts_max LIMIT ?)`,
		cutoff.UnixMilli())
}

// pruneHoursBefore deletes the hourly rollups of hours that began before
// cutoff. telemetry_1h has no index on ts (it took a third of the
// table's room): each device's expired hours are found by the primary
// key (device_id, ts, metric), device after device. The pruner runs it
// once an hour, when a new hour expires.
func (t *Telemetry) pruneHoursBefore(ctx context.Context, cutoff time.Time) error {
	device, next := "", `SELECT device_id FROM telemetry_1h WHERE device_id >= ? ORDER BY device_id LIMIT 1`
	for {
		err := t.db.R.QueryRowContext(ctx, next, device).Scan(&device)
		next = `SELECT device_id FROM telemetry_1h WHERE device_id > ? ORDER BY device_id LIMIT 1`
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("telemetry prune rollups: %w", err)
		}
		if err := t.pruneRows(ctx,
			`DELETE FROM telemetry_1h WHERE (device_id, ts, metric) IN
			   (SELECT device_id, ts, metric FROM telemetry_1h WHERE device_id = ? AND ts < ? ORDER BY ts LIMIT ?)`,
			device, cutoff.UnixMilli()); err != nil {
			return err
		}
	}
}

// pruneRows runs the DELETE q with args and PruneChunk until it deletes
// fewer rows than that.
func (t *Telemetry) pruneRows(ctx context.Context, q string, args ...any) error {
	args = append(args, t.opts.PruneChunk)
	for {
		res, err := t.db.W.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("telemetry prune rollups: %w", err)
		}
		if n, _ := res.RowsAffected(); n < int64(t.opts.PruneChunk) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("telemetry prune rollups: %w", err)
		}
	}
}
