package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// The rollups' size bound (RollupRetentionSize): telemetry.rollup_retention
// alone lets them grow with the fleet (1,000 devices of 10 metrics take
// 25–50 GB of minute rollups in 400 days). Past the bound the pruner
// removes the oldest minute chunks first (the finer rollups, and the
// larger part), then, if that is not enough, whole hours of the hourly
// rollups, the oldest first, as PruneToSize does for the raw history
// (which it never touches).

// rollupSizeLock is the PostgreSQL advisory lock a node holds while it
// prunes the rollups to their size bound (as sizeLock for the history).
const rollupSizeLock = 0x7465746865720003

// hourRowOverhead is what an hourly row takes on disk beside its device
// id and metric name (once each on SQLite, a WITHOUT ROWID table; twice
// on PostgreSQL, in the row and in its primary key's index): the row's
// header, its hour, min, max, sum and count, and the b-tree's room around
// it. Measured against SQLite's dbstat and PostgreSQL's
// pg_total_relation_size (TestTelemetryRollupSizeEstimate).
var hourRowOverhead = map[database.Dialect]int64{database.SQLite: 50, database.Postgres: 115}

// minuteIndexBytes is what a minute chunk takes in its two indexes on
// SQLite, (device_id, ts_min) and (ts_max), beside its device id (counted
// in the bytes pageShare is given).
const minuteIndexBytes = 40

// pageShare is the bytes of a SQLite table b-tree's pages that a row of
// payload bytes takes, in a table of rows of that size each, appended in
// rowid order (so its leaf pages are filled): the page divided by the
// rows that fit on it, or for a row too large for one page, the page
// share of the part kept on its page and its overflow pages (as SQLite's
// btreeParseCellAdjustSizeForOverflow splits it). Minute chunks of a few
// metrics are a third or half of a page, and the rest of the page is no
// other row's: counting their bytes alone left a quarter of their room
// out (TestTelemetryRollupSizeEstimate).
func pageShare(payload float64, page int64) float64 {
	u := float64(page)
	maxLocal := u - 35
	if payload <= maxLocal {
		// A cell: the payload, its size and rowid varints, the cell
		// pointer; a leaf page's header is 8 bytes.
		return u / max(1, math.Floor((u-8)/(payload+6)))
	}
	minLocal := math.Floor((u-12)*32/255) - 23
	local := minLocal + math.Mod(payload-minLocal, u-4)
	if local > maxLocal {
		local = minLocal
	}
	return pageShare(local+4, page) + u*math.Ceil((payload-local)/(u-4))
}

// rollupSizes is the rollups' estimated size: bytes of the minute
// chunks and of the hourly rows, and how many hourly rows.
type rollupSizes struct{ minutes, hours, hourRows int64 }

// rollupSize estimates the rollups' size on disk without reading them. On
// SQLite, telemetry_rollup_sizes holds their rows and bytes, kept by
// triggers on the two tables (step 7 of telemetrySchema): a minute chunk
// is counted as its page share (pageShare of the average chunk) and its
// index entries, an hourly row as its names and hourRowOverhead. On PostgreSQL the minute chunks are measured as the
// history is (chunksSize), and the hourly rows are the statistics'
// n_live_tup times the size of 256 of them, at most the table's files.
func (t *Telemetry) rollupSize(ctx context.Context) (rollupSizes, error) {
	var s rollupSizes
	over := hourRowOverhead[t.db.Dialect]
	if t.db.Dialect != database.Postgres {
		rows, err := t.db.R.QueryContext(ctx, `SELECT tbl, rows, bytes, (SELECT page_size FROM pragma_page_size()) FROM telemetry_rollup_sizes`)
		if err != nil {
			return s, fmt.Errorf("telemetry: rollup size: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var tbl string
			var n, b, page int64
			if err := rows.Scan(&tbl, &n, &b, &page); err != nil {
				return s, fmt.Errorf("telemetry: rollup size: %w", err)
			}
			switch tbl {
			case "telemetry_1m":
				if n > 0 {
					s.minutes = int64(float64(n) * (pageShare(float64(b)/float64(n), page) + minuteIndexBytes))
				}
			case "telemetry_1h":
				s.hours, s.hourRows = b+n*over, n
			}
		}
		if err := rows.Err(); err != nil {
			return s, fmt.Errorf("telemetry: rollup size: %w", err)
		}
		return s, nil
	}
	var err error
	if s.minutes, err = t.chunksSize(ctx, "telemetry_1m"); err != nil {
		return s, fmt.Errorf("telemetry: rollup size: %w", err)
	}
	var files int64
	var avg sql.NullFloat64
	if err := t.db.R.QueryRowContext(ctx, `SELECT
		COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'telemetry_1h'::regclass), 0),
		pg_total_relation_size('telemetry_1h'),
		(SELECT avg(2*(length(device_id) + length(metric))) FROM (SELECT device_id, metric FROM telemetry_1h LIMIT 256) sample)`).
		Scan(&s.hourRows, &files, &avg); err != nil {
		return s, fmt.Errorf("telemetry: rollup size: %w", err)
	}
	s.hours = min(int64(float64(s.hourRows)*(avg.Float64+float64(over))), files)
	return s, nil
}

// PruneRollupsToSize measures the rollups (rollupSize) and, when they are
// larger than RollupRetentionSize, deletes the oldest minute chunks, then
// if need be whole hours of the hourly rollups, the oldest first, until
// the bytes they held cover the excess and a hundredth of the bound more
// (as PruneToSize). It never deletes the hourly rollups of the current
// hour and the one before (the writer is adding to them): if they alone
// pass the bound, the log says so. Each statement deletes at most
// PruneChunk rows, so the writer waits little. It logs once what it
// removed and why.
func (t *Telemetry) PruneRollupsToSize(ctx context.Context) error {
	s, err := t.rollupSize(ctx)
	if err != nil {
		return err
	}
	size := s.minutes + s.hours
	t.m.rollupBytes.Set(float64(size))
	limit := t.opts.RollupRetentionSize
	if limit <= 0 || size <= limit {
		return nil
	}
	release, mine, err := t.tryLock(ctx, rollupSizeLock)
	if err != nil {
		return fmt.Errorf("telemetry prune rollups to size: %w", err)
	}
	if !mine {
		return nil // another node is at it
	}
	defer release()
	excess := size - limit + limit/100
	start := time.Now()
	minutes, freed, err := t.pruneMinutesToSize(ctx, excess)
	t.m.minutesPruned[1].Add(float64(minutes))
	var hours, oldestKept int64 = 0, math.MinInt64
	if err == nil && freed < excess && t.db.Dialect != database.Postgres {
		// SQLite's counts are exact at once: what the minutes freed is
		// what the estimate lost (pageShare of their average, not the
		// sum of each row's).
		var now rollupSizes
		if now, err = t.rollupSize(ctx); err == nil {
			freed = size - (now.minutes + now.hours)
		}
	}
	if err == nil && freed < excess && s.hourRows > 0 {
		perRow := float64(s.hours) / float64(s.hourRows)
		hours, oldestKept, err = t.pruneHoursToSize(ctx, excess-freed, perRow, s.hourRows, start)
		freed += int64(float64(hours) * perRow)
	}
	if minutes == 0 && hours == 0 && err != nil {
		return err
	}
	args := []any{"size_bytes", size, "rollup_retention_size", limit, "minute_rows", minutes, "hour_rows", hours,
		"bytes_removed", freed, "took", time.Since(start).Round(time.Millisecond)}
	if oldestKept != math.MinInt64 {
		args = append(args, "oldest_hour_kept", time.UnixMilli(oldestKept).UTC())
	}
	switch {
	case err != nil:
		t.log.Warn("telemetry: rollups larger than telemetry.rollup_retention_size; pruning the oldest stopped", append(args, "error", err)...)
	case freed < excess:
		t.log.Warn("telemetry: rollups larger than telemetry.rollup_retention_size; pruned the oldest down to the hourly rollups of the last two hours, which alone pass it (raise telemetry.rollup_retention_size)", args...)
	default:
		t.log.Warn("telemetry: rollups larger than telemetry.rollup_retention_size; pruned the oldest (raise telemetry.rollup_retention_size to keep telemetry.rollup_retention)", args...)
	}
	return err
}

// pruneMinutesToSize deletes the oldest minute chunks (by their latest
// minute), PruneChunk rows per statement, until the bytes they held (as
// rollupSize counts them) reach budget or none is left, and returns how
// many rows and bytes went.
func (t *Telemetry) pruneMinutesToSize(ctx context.Context, budget int64) (rows, freed int64, err error) {
	// A row's bytes as rollupSize counts them: on SQLite its page share,
	// on PostgreSQL as chunksSize (rowBytes).
	q := `SELECT id, length(data) + 2*length(device_id) FROM telemetry_1m ORDER BY ts_max, id LIMIT ?`
	bytes := func(b int64) int64 { return b + chunkRowOverhead }
	if t.db.Dialect == database.Postgres {
		q = `SELECT id, pg_column_size(data) + 2*length(device_id) FROM telemetry_1m ORDER BY ts_max, id LIMIT ?`
	} else {
		var page int64
		if err := t.db.R.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&page); err != nil {
			return 0, 0, fmt.Errorf("telemetry prune rollups to size: %w", err)
		}
		bytes = func(b int64) int64 { return int64(pageShare(float64(b), page) + minuteIndexBytes) }
	}
	for freed < budget {
		rs, err := t.db.R.QueryContext(ctx, q, t.opts.PruneChunk)
		if err != nil {
			return rows, freed, fmt.Errorf("telemetry prune rollups to size: %w", err)
		}
		var ids []any
		read := 0
		for rs.Next() {
			var id, b int64
			if err := rs.Scan(&id, &b); err != nil {
				rs.Close()
				return rows, freed, fmt.Errorf("telemetry prune rollups to size: %w", err)
			}
			read++
			if freed < budget {
				ids = append(ids, id)
				freed += bytes(b)
			}
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return rows, freed, fmt.Errorf("telemetry prune rollups to size: %w", err)
		}
		if len(ids) == 0 {
			return rows, freed, nil
		}
		res, err := t.db.W.ExecContext(ctx, `DELETE FROM telemetry_1m WHERE id IN (?`+strings.Repeat(",?", len(ids)-1)+`)`, ids...)
		if err != nil {
			return rows, freed, fmt.Errorf("telemetry prune rollups to size: %w", err)
		}
		n, _ := res.RowsAffected()
		rows += n
		if read < t.opts.PruneChunk {
			return rows, freed, nil
		}
	}
	return rows, freed, nil
}

// pruneHoursToSize deletes whole hours of the hourly rollups, the oldest
// first, until about budget bytes went (perRow each of the total rows),
// keeping the hour of now and the one before. Each round it finds the
// oldest and newest hour (hourSpan), takes the rows of an hour to be the
// average over them, or what the hours of the round before held if more,
// and deletes half the hours that would take (one in the first round):
// the oldest hours may hold more rows than the average (a backfill), and
// a round too many costs less than hours deleted for nothing. It returns
// how many rows went and the oldest hour kept.
func (t *Telemetry) pruneHoursToSize(ctx context.Context, budget int64, perRow float64, total int64, now time.Time) (removed, oldestKept int64, err error) {
	hour := time.Hour.Milliseconds()
	guard := floorDiv(now.UnixMilli(), hour)*hour - hour
	oldestKept = math.MinInt64
	var seen float64 // rows an hour in the round before; 0 before the first
	for float64(removed)*perRow < float64(budget) {
		oldest, newest, ok, err := t.hourSpan(ctx)
		if err != nil || !ok {
			return removed, oldestKept, err
		}
		oldestKept = oldest
		if oldest >= guard {
			return removed, oldestKept, nil
		}
		perHour := max(1, seen, float64(total-removed)/float64((newest-oldest)/hour+1))
		need := math.Ceil((float64(budget) - float64(removed)*perRow) / (perHour * perRow))
		k := int64(1)
		if seen > 0 {
			k = max(1, int64(need)/2)
		}
		cutoff := min(oldest+k*hour, guard)
		n, err := t.pruneHoursBefore(ctx, time.UnixMilli(cutoff))
		removed += n
		seen = float64(n) / float64((cutoff-oldest)/hour)
		t.m.hoursPruned[1].Add(float64(n))
		if err != nil {
			return removed, oldestKept, err
		}
		oldestKept = cutoff
	}
	return removed, oldestKept, nil
}

// hourSpan returns the start of the oldest and of the newest hour of the
// hourly rollups (ok false when there are none), from each device's first
// and last row by the primary key.
func (t *Telemetry) hourSpan(ctx context.Context) (oldest, newest int64, ok bool, err error) {
	oldest, newest = math.MaxInt64, math.MinInt64
	err = t.eachHourDevice(ctx, func(device string) error {
		var lo, hi sql.NullInt64
		err := t.db.R.QueryRowContext(ctx, `SELECT
			(SELECT ts FROM telemetry_1h WHERE device_id = ? ORDER BY ts LIMIT 1),
			(SELECT ts FROM telemetry_1h WHERE device_id = ? ORDER BY ts DESC LIMIT 1)`, device, device).Scan(&lo, &hi)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("telemetry prune rollups to size: %w", err)
		}
		if lo.Valid && hi.Valid {
			oldest, newest, ok = min(oldest, lo.Int64), max(newest, hi.Int64), true
		}
		return nil
	})
	return oldest, newest, ok, err
}
