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
			if _, err := t.PruneToSize(ctx); err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune to telemetry.retention_size", "error", err)
			}
			cutoff := time.Now().Add(-t.opts.RollupRetention)
			n, err = t.pruneMinutesBefore(ctx, cutoff)
			t.m.minutesPruned[0].Add(float64(n))
			if hour := expiredHour(cutoff); err == nil && hour != lastHour {
				n, err = t.pruneHoursBefore(ctx, cutoff)
				t.m.hoursPruned[0].Add(float64(n))
				if err == nil {
					lastHour = hour
				}
			}
			if err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune rollups", "error", err)
			}
			if err := t.PruneRollupsToSize(ctx); err != nil && ctx.Err() == nil {
				t.log.Error("telemetry: prune to telemetry.rollup_retention_size", "error", err)
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
		rows, points, _, newer, err := t.pruneChunk(ctx, cutoff, &after, 0)
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
// many rows it read, how many points went and about how many bytes of
// the history they held (rowBytes). With a budget above 0 it stops after
// the row that takes those bytes to budget (rows is then less than
// PruneChunk). A row of a chunk format
// this release does not know (a newer release wrote it, in a cluster
// being upgraded) is left as it is, for a node that reads it, and counted
// in newer: deleting it would lose its points without their rollups.
func (t *Telemetry) pruneChunk(ctx context.Context, cutoff time.Time, after *pruneCursor, budget int64) (rows, points, bytes int64, newer int, err error) {
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
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
		return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
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
			return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
		rows++
		*after = pruneCursor{ts: tsMax, id: id}
		c, err := decodeChunk(data, nil)
		if errors.Is(err, errChunkNewer) {
			newer++
			continue
		}
		ids = append(ids, id)
		bytes += rowBytes(device, data)
		if err != nil { // nothing to keep of it
			t.log.Error("telemetry prune: stored chunk does not decode", "device", device, "error", err)
			if budget > 0 && bytes >= budget {
				break
			}
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
		if budget > 0 && bytes >= budget {
			break
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	if len(ids) == 0 {
		return rows, 0, 0, newer, nil
	}
	if err := r.write(ctx, tx); err != nil {
		return 0, 0, 0, 0, err
	}
	del, err := tx.PrepareContext(ctx, `DELETE FROM telemetry_chunks WHERE id = ?`)
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	defer del.Close()
	for _, id := range ids {
		if _, err := del.ExecContext(ctx, id); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("telemetry prune: %w", err)
	}
	return rows, points, bytes, newer, nil
}

// PruneRollupsBefore deletes the rollups of minutes and hours that began
// before cutoff, a few hundred rows per transaction.
func (t *Telemetry) PruneRollupsBefore(ctx context.Context, cutoff time.Time) error {
	n, err := t.pruneMinutesBefore(ctx, cutoff)
	t.m.minutesPruned[0].Add(float64(n))
	if err != nil {
		return err
	}
	n, err = t.pruneHoursBefore(ctx, cutoff)
	t.m.hoursPruned[0].Add(float64(n))
	return err
}

// pruneMinutesBefore deletes the minute chunks of minutes before cutoff,
// by their index on ts_max, and returns how many rows went.
func (t *Telemetry) pruneMinutesBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	return t.pruneRows(ctx,
		`DELETE FROM telemetry_1m WHERE id IN (SELECT id FROM telemetry_1m WHERE ts_max < ? ORDER BY ts_max LIMIT ?)`,
		cutoff.UnixMilli())
}

// pruneHoursBefore deletes the hourly rollups of hours that began before
// cutoff, and returns how many rows went. telemetry_1h has no index on ts
// (it took a third of the table's room): each device's expired hours are
// found by the primary key (device_id, ts, metric), device after device
// (eachHourDevice). The pruner runs it once an hour, when a new hour
// expires, and to the size bound (pruneHoursToSize).
func (t *Telemetry) pruneHoursBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	err := t.eachHourDevice(ctx, func(device string) error {
		n, err := t.pruneRows(ctx,
			`DELETE FROM telemetry_1h WHERE (device_id, ts, metric) IN
			   (SELECT device_id, ts, metric FROM telemetry_1h WHERE device_id = ? AND ts < ? ORDER BY ts LIMIT ?)`,
			device, cutoff.UnixMilli())
		total += n
		return err
	})
	return total, err
}

// eachHourDevice calls fn with each device that has hourly rollups, in
// order, found one by one by the primary key.
func (t *Telemetry) eachHourDevice(ctx context.Context, fn func(device string) error) error {
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
		if err := fn(device); err != nil {
			return err
		}
	}
}

// pruneRows runs the DELETE q with args and PruneChunk until it deletes
// fewer rows than that, and returns how many it deleted.
func (t *Telemetry) pruneRows(ctx context.Context, q string, args ...any) (int64, error) {
	args = append(args, t.opts.PruneChunk)
	var total int64
	for {
		res, err := t.db.W.ExecContext(ctx, q, args...)
		if err != nil {
			return total, fmt.Errorf("telemetry prune rollups: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < int64(t.opts.PruneChunk) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("telemetry prune rollups: %w", err)
		}
	}
}

// sizeGuard is how recent a history row the size bound leaves alone:
// the rows written within it are the devices' open chunks, which the
// writer is still rewriting (a rewrite that finds its row gone drops the
// batch's points of that device).
const sizeGuard = time.Minute

// sizeLock is the PostgreSQL advisory lock a node holds while it prunes
// to the size bound, so that two nodes measuring the same excess do not
// both remove it.
const sizeLock = 0x7465746865720002

// tryLock takes, on PostgreSQL, the advisory lock key on a connection
// of its own, if no other node holds it (mine); release lets it go. On
// SQLite, with one writer, it is always mine.
func (t *Telemetry) tryLock(ctx context.Context, key int64) (release func(), mine bool, err error) {
	if t.db.Dialect != database.Postgres {
		return func() {}, true, nil
	}
	conn, err := t.db.W.Conn(ctx)
	if err != nil {
		return nil, false, err
	}
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(?)`, key).Scan(&mine); err != nil || !mine {
		conn.Close()
		return nil, false, err
	}
	return func() {
		conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock(?)`, key)
		conn.Close()
	}, true, nil
}

// PruneToSize measures the history (historySize) and, when it is larger
// than RetentionSize, deletes the oldest history rows of all devices,
// by their latest point, folding them into the minute rollups as
// retention does, until the bytes they held cover the excess (and a
// hundredth of the bound more, so that a history growing at the bound
// is not pruned a few rows at every pass). It logs once what it
// removed and why, and returns how many points went. Rows whose latest
// point is less than sizeGuard old stay: if they alone pass the bound,
// it says so. The hourly rollups are kept, and so are the minute ones,
// by telemetry.rollup_retention alone.
func (t *Telemetry) PruneToSize(ctx context.Context) (int64, error) {
	size, err := t.historySize(ctx)
	if err != nil {
		return 0, err
	}
	t.m.historyBytes.Set(float64(size))
	limit := t.opts.RetentionSize
	if limit <= 0 || size <= limit {
		return 0, nil
	}
	release, mine, err := t.tryLock(ctx, sizeLock)
	if err != nil {
		return 0, fmt.Errorf("telemetry prune to size: %w", err)
	}
	if !mine {
		return 0, nil // another node is at it
	}
	defer release()
	excess := size - limit + limit/100
	start := time.Now()
	after := pruneCursor{ts: math.MinInt64}
	var points, freed int64
	var last int64 // the latest point of the last row removed
	for freed < excess {
		rows, n, b, _, err := t.pruneChunk(ctx, start.Add(-sizeGuard), &after, excess-freed)
		points += n
		freed += b
		t.m.prunedSize.Add(float64(n))
		if err != nil {
			return points, err
		}
		if n > 0 {
			last = after.ts
		}
		if rows < int64(t.opts.PruneChunk) {
			break
		}
	}
	args := []any{"size_bytes", size, "retention_size", limit, "points", points, "bytes_removed", freed,
		"took", time.Since(start).Round(time.Millisecond)}
	if points > 0 {
		args = append(args, "latest_point_removed", time.UnixMilli(last).UTC())
	}
	if freed < excess {
		t.log.Warn("telemetry: history larger than telemetry.retention_size; pruned the oldest points of all devices down to those of the last minute, which alone pass it (raise telemetry.retention_size, or lower telemetry.device_values_rate)", args...)
	} else {
		t.log.Warn("telemetry: history larger than telemetry.retention_size; pruned the oldest points of all devices (raise telemetry.retention_size to keep telemetry.retention)", args...)
	}
	return points, nil
}

// rowBytes is about what a history row takes on disk: its chunk, its
// device id in the row and in its index, and the rest of the row and
// its two index entries.
func rowBytes(device string, data []byte) int64 {
	return int64(len(data) + 2*len(device) + chunkRowOverhead)
}

// chunkRowOverhead is what rowBytes adds to a row's chunk and device ids.
const chunkRowOverhead = 64

// historySize estimates the raw history's size on disk, in bytes,
// without reading it (chunksSize of telemetry_chunks). The rollups are
// not counted: they are bounded apart (rollupSize).
func (t *Telemetry) historySize(ctx context.Context) (int64, error) {
	size, err := t.chunksSize(ctx, "telemetry_chunks")
	if err != nil {
		return 0, fmt.Errorf("telemetry: history size: %w", err)
	}
	return size, nil
}

// chunksSize estimates the size on disk of a table of chunks
// (telemetry_chunks, telemetry_1m), in bytes, without reading it: its
// rows times the average size (as rowBytes counts it) of its 256 oldest
// rows, the next to go, which are complete chunks (the newest rows of the
// history are the devices' open chunks, still growing). Rows are counted
// on SQLite by count(*), which SQLite answers from the smallest index,
// (ts_max, id): about 15 bytes a row, some 40 MB for 10 GB of history
// (2.6 million rows: 52–250 ms from the page cache at load average 10,
// once a minute); on PostgreSQL the statistics' n_live_tup (whose files
// do not shrink when rows are deleted: their room is reused once
// vacuumed), at most the table's files (pg_total_relation_size).
func (t *Telemetry) chunksSize(ctx context.Context, table string) (int64, error) {
	avgOldest := `SELECT avg(%s + 2*length(device_id) + ` + fmt.Sprint(chunkRowOverhead) + `)
		FROM (SELECT data, device_id FROM ` + table + ` ORDER BY ts_max, id LIMIT 256) oldest`
	var rows, files int64
	var avg sql.NullFloat64
	var err error
	if t.db.Dialect != database.Postgres {
		err = t.db.R.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM `+table+`), -1, (`+
			fmt.Sprintf(avgOldest, "length(data)")+`)`).Scan(&rows, &files, &avg)
	} else {
		err = t.db.R.QueryRowContext(ctx, `SELECT
			COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = '`+table+`'::regclass), 0),
			pg_total_relation_size('`+table+`'), (`+
			fmt.Sprintf(avgOldest, "pg_column_size(data)")+`)`).Scan(&rows, &files, &avg)
	}
	if err != nil {
		return 0, err
	}
	size := int64(float64(rows) * avg.Float64)
	if files >= 0 {
		size = min(size, files)
	}
	return size, nil
}
