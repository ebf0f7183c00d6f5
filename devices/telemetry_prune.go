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
	// after is the last row read: rows a newer release wrote stay, and
	// the next transaction reads on past them.
	after := pruneCursor{ts: math.MinInt64}
	kept := 0
	for {
		rows, points, newer, err := t.pruneChunk(ctx, cutoff, &after)
		if err != nil {
			return total, err
		}
		total += points
		kept += newer
		t.m.pruned.Add(float64(points))
		if rows < int64(t.opts.PruneChunk) {
			if kept > 0 {
				t.log.Warn("telemetry prune: expired chunks written by a newer release of Tether left in place for a node that reads them (finish the upgrade)", "chunks", kept)
			}
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("telemetry prune: %w", err)
		}
	}
}

// pruneCursor is where a pruning pass has read to: (ts_max, id).
type pruneCursor struct{ ts, id int64 }

// pruneChunk moves up to PruneChunk expired rows after *after into the
// minute rollups and deletes them, in one transaction, and returns how
// many rows it read and how many points went. A row of a chunk format
// this release does not know (a newer release wrote it, in a cluster
// being upgraded) is left as it is, for a node that reads it, and counted
// in newer: deleting it would lose its points without their rollups.
func (t *Telemetry) pruneChunk(ctx context.Context, cutoff time.Time, after *pruneCursor) (rows, points int64, newer int, err error) {
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer tx.Rollback()
	q := `SELECT id, device_id, ts_max, data FROM telemetry_chunks
		WHERE ts_max < ? AND (ts_max > ? OR (ts_max = ? AND id > ?))
		ORDER BY ts_max, id LIMIT ?`
	if t.db.Dialect == database.Postgres {
		// Another node's pruner may be at the same rows: each row is
		// folded into the minute rollups by one of them only.
		q += ` FOR UPDATE SKIP LOCKED`
	}
	rs, err := tx.QueryContext(ctx, q, cutoff.UnixMilli(), after.ts, after.ts, after.id, t.opts.PruneChunk)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	r := newRollups(false, t.db.Dialect)
	now := time.Now()
	var ids []int64
	for rs.Next() {
		var id, tsMax int64
		var device string
		var data []byte
		if err := rs.Scan(&id, &device, &tsMax, &data); err != nil {
			rs.Close()
			return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
		rows++
		*after = pruneCursor{ts: tsMax, id: id}
		c, err := decodeChunk(data, nil)
		if errors.Is(err, errChunkNewer) {
			newer++
			continue
		}
		ids = append(ids, id)
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
		return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	if len(ids) == 0 {
		return rows, 0, newer, nil
	}
	if err := r.write(ctx, tx); err != nil {
		return 0, 0, 0, err
	}
	del, err := tx.PrepareContext(ctx, `DELETE FROM telemetry_chunks WHERE id = ?`)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer del.Close()
	for _, id := range ids {
		if _, err := del.ExecContext(ctx, id); err != nil {
			return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	return rows, points, newer, nil
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
