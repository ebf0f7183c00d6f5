package devices

import (
	"context"
	"fmt"
	"time"
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
// cutoff, PruneChunk rows per transaction, so that the batch writer gets
// the connection between chunks. It returns how many points it deleted.
func (t *Telemetry) PruneBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		rows, points, err := t.pruneChunk(ctx, cutoff)
		if err != nil {
			return total, err
		}
		total += points
		t.stats.pruned.Add(points)
		if rows < int64(t.opts.PruneChunk) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("telemetry prune: %w", err)
		}
	}
}

// pruneChunk deletes up to PruneChunk expired rows and returns how many
// rows and points went.
func (t *Telemetry) pruneChunk(ctx context.Context, cutoff time.Time) (rows, points int64, err error) {
	rs, err := t.db.W.QueryContext(ctx,
		`DELETE FROM telemetry_chunks WHERE id IN (SELECT id FROM telemetry_chunks WHERE ts_max < ? ORDER BY ts_max LIMIT ?) RETURNING n`,
		cutoff.UnixMilli(), t.opts.PruneChunk)
	if err != nil {
		return 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var n int64
		if err := rs.Scan(&n); err != nil {
			return rows, points, fmt.Errorf("telemetry prune: %w", err)
		}
		rows++
		points += n
	}
	if err := rs.Err(); err != nil {
		return rows, points, fmt.Errorf("telemetry prune: %w", err)
	}
	return rows, points, nil
}

// PruneRollupsBefore deletes the rollups of minutes and hours that began
// before cutoff, a few thousand rows per transaction.
func (t *Telemetry) PruneRollupsBefore(ctx context.Context, cutoff time.Time) error {
	for _, l := range rollupLevels {
		for {
			res, err := t.db.W.ExecContext(ctx,
				`DELETE FROM `+l.table+` WHERE (device_id, ts, metric) IN
				   (SELECT device_id, ts, metric FROM `+l.table+` WHERE ts < ? ORDER BY ts LIMIT ?)`,
				cutoff.UnixMilli(), 20*t.opts.PruneChunk)
			if err != nil {
				return fmt.Errorf("telemetry prune rollups: %w", err)
			}
			if n, _ := res.RowsAffected(); n < int64(20*t.opts.PruneChunk) {
				break
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("telemetry prune rollups: %w", err)
			}
		}
	}
	return nil
}
