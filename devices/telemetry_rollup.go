package devices

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Rollup levels: per-minute and per-hour min, max, sum and count of each
// numeric metric of each device, kept for RollupRetention (beyond the raw
// history's Retention). The writer folds each batch into them in the same
// transaction as its points.
var rollupLevels = [...]struct {
	table string
	step  time.Duration
}{
	{"telemetry_1m", time.Minute},
	{"telemetry_1h", time.Hour},
}

type rollKey struct {
	device, metric string
	ts             int64 // start of the minute or hour, Unix ms
}

type agg struct {
	min, max, sum float64
	n             int64
}

func (a *agg) add(v float64) {
	if a.n == 0 || v < a.min {
		a.min = v
	}
	if a.n == 0 || v > a.max {
		a.max = v
	}
	a.sum += v
	a.n++
}

// rollups collects one batch's aggregates per level.
type rollups struct {
	levels [len(rollupLevels)]map[rollKey]*agg
}

func newRollups() *rollups {
	r := &rollups{}
	for i := range r.levels {
		r.levels[i] = make(map[rollKey]*agg)
	}
	return r
}

func (r *rollups) add(device, metric string, ts int64, v float64) {
	for i, l := range rollupLevels {
		ms := l.step.Milliseconds()
		k := rollKey{device, metric, floorDiv(ts, ms) * ms}
		a := r.levels[i][k]
		if a == nil {
			a = &agg{}
			r.levels[i][k] = a
		}
		a.add(v)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// upsertRows is how many aggregates one statement carries.
const upsertRows = 32

// write merges the aggregates into the rollup tables.
func (r *rollups) write(ctx context.Context, tx *sql.Tx) error {
	for i, l := range rollupLevels {
		m := r.levels[i]
		if len(m) == 0 {
			continue
		}
		full, err := tx.PrepareContext(ctx, upsertSQL(l.table, upsertRows))
		if err != nil {
			return fmt.Errorf("telemetry rollups: prepare: %w", err)
		}
		args := make([]any, 0, 7*upsertRows)
		flush := func() error {
			var err error
			if len(args) == 7*upsertRows {
				_, err = full.ExecContext(ctx, args...)
			} else {
				_, err = tx.ExecContext(ctx, upsertSQL(l.table, len(args)/7), args...)
			}
			args = args[:0]
			return err
		}
		for k, a := range m {
			args = append(args, k.device, k.metric, k.ts, a.min, a.max, a.sum, a.n)
			if len(args) == cap(args) {
				if err := flush(); err != nil {
					full.Close()
					return fmt.Errorf("telemetry rollups: %w", err)
				}
			}
		}
		if len(args) > 0 {
			if err := flush(); err != nil {
				full.Close()
				return fmt.Errorf("telemetry rollups: %w", err)
			}
		}
		full.Close()
		clear(m)
	}
	return nil
}

func upsertSQL(table string, rows int) string {
	b := make([]byte, 0, 256+16*rows)
	b = append(b, "INSERT INTO "...)
	b = append(b, table...)
	b = append(b, "(device_id, metric, ts, min, max, sum, n) VALUES "...)
	for i := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "(?,?,?,?,?,?,?)"...)
	}
	b = append(b, " ON CONFLICT DO UPDATE SET min = min(min, excluded.min), max = max(max, excluded.max), sum = sum + excluded.sum, n = n + excluded.n"...)
	return string(b)
}
