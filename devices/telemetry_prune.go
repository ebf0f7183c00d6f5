package devices

import (
	"context"
	"fmt"
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
			if err := t.PruneRollupsBefore(ctx, time.Now().Add(-t.opts.RollupRetention)); err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune rollups", "error", err)
			}
		}
	}
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
	for _, q := range []string{
		`DELETE FROM telemetry_1m WHERE id IN (SELECT id FROM telemetry_1m WHERE ts_max < ? ORDER BY ts_max LIMIT ?)`,
		`DELETE FROM telemetry_1h WHERE (device_id, ts, metric) IN
		   (SELECT device_id, ts, metric FROM telemetry_1h WHERE ts < ? ORDER BY ts LIMIT ?)`,
	} {
		for {
			res, err := t.db.W.ExecContext(ctx, q, cutoff.UnixMilli(), t.opts.PruneChunk)
			if err != nil {
				return fmt.Errorf("telemetry prune rollups: %w", err)
			}
			if n, _ := res.RowsAffected(); n < int64(t.opts.PruneChunk) {
				break
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("telemetry prune rollups: %w", err)
			}
		}
	}
	return nil
}
