package devices

import (
	"context"
	"fmt"
	"time"
)

// prune deletes points older than the retention every PruneInterval.
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
		}
	}
}

// PruneBefore deletes the points older than cutoff, PruneChunk rows per
// transaction, so that the batch writer gets the connection between
// chunks. It returns how many points it deleted.
func (t *Telemetry) PruneBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		res, err := t.db.W.ExecContext(ctx,
			`DELETE FROM telemetry WHERE id IN (SELECT id FROM telemetry WHERE ts < ? ORDER BY ts LIMIT ?)`,
			cutoff.UnixMilli(), t.opts.PruneChunk)
		if err != nil {
			return total, fmt.Errorf("telemetry prune: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		t.stats.pruned.Add(n)
		if n < int64(t.opts.PruneChunk) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("telemetry prune: %w", err)
		}
	}
}
