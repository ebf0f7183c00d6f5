package devices

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Query limits.
const (
	MaxTelemetryPoints  = 10000 // points one query returns
	MaxTelemetryBuckets = 10000 // buckets one query returns
)

// Bucket is the min, avg and max of each numeric metric over [TS, TS+step).
type Bucket struct {
	TS  time.Time          `json:"ts"`
	Min map[string]float64 `json:"min"`
	Avg map[string]float64 `json:"avg"`
	Max map[string]float64 `json:"max"`
}

// Points returns device's points with from <= ts <= to in time order, at
// most limit of them (the earliest); limit is 1 to MaxTelemetryPoints.
func (t *Telemetry) Points(ctx context.Context, device string, from, to time.Time, limit int) ([]Point, error) {
	if limit < 1 || limit > MaxTelemetryPoints {
		return nil, invalid("limit", "must be between 1 and %d", MaxTelemetryPoints)
	}
	if to.Before(from) {
		return nil, invalid("to", "is before from")
	}
	lo, hi := from.UnixMilli(), to.UnixMilli()
	rows, err := t.db.R.QueryContext(ctx,
		`SELECT ts_min, points FROM telemetry
		  WHERE device_id = ? AND ts_min BETWEEN ? AND ? AND ts_max >= ?
		  ORDER BY ts_min, id`,
		device, lo-chunkSpan.Milliseconds(), hi, lo)
	if err != nil {
		return nil, fmt.Errorf("telemetry points: %w", err)
	}
	defer rows.Close()
	type stored struct {
		ts   int64
		vals json.RawMessage
	}
	var got []stored
	for rows.Next() {
		var tsMin int64
		var points []byte
		if err := rows.Scan(&tsMin, &points); err != nil {
			return nil, fmt.Errorf("telemetry points: %w", err)
		}
		// Chunks come in order of their first point: once limit points
		// are in hand and this chunk starts after the last of them,
		// nothing later can be among the earliest.
		if len(got) >= limit && tsMin > got[limit-1].ts {
			break
		}
		var pts [][2]json.RawMessage
		if err := json.Unmarshal(points, &pts); err != nil {
			return nil, fmt.Errorf("telemetry points: stored chunk: %w", err)
		}
		for _, p := range pts {
			ts, err := strconv.ParseInt(string(p[0]), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("telemetry points: stored chunk: %w", err)
			}
			if ts >= lo && ts <= hi {
				got = append(got, stored{ts, p[1]})
			}
		}
		if len(got) >= limit {
			slices.SortStableFunc(got, func(a, b stored) int { return cmp.Compare(a.ts, b.ts) })
			got = got[:limit]
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("telemetry points: %w", err)
	}
	slices.SortStableFunc(got, func(a, b stored) int { return cmp.Compare(a.ts, b.ts) })
	out := make([]Point, 0, len(got))
	for _, g := range got {
		p := Point{TS: time.UnixMilli(g.ts).UTC()}
		if err := json.Unmarshal(g.vals, &p.Values); err != nil {
			return nil, fmt.Errorf("telemetry points: stored values: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Buckets returns, for each step-long bucket (aligned to multiples of step
// since the Unix epoch) in [from, to] that holds points, the min, avg and
// max of each numeric metric, in time order.
func (t *Telemetry) Buckets(ctx context.Context, device string, from, to time.Time, step time.Duration) ([]Bucket, error) {
	if step < time.Millisecond {
		return nil, invalid("step", "must be at least 1ms")
	}
	if to.Before(from) {
		return nil, invalid("to", "is before from")
	}
	ms := step.Milliseconds()
	lo, hi := from.UnixMilli(), to.UnixMilli()
	if n := (hi - lo) / ms; n > MaxTelemetryBuckets {
		return nil, invalid("step", "makes %d buckets (at most %d): choose a longer step or a shorter range", n, MaxTelemetryBuckets)
	}
	rows, err := t.db.R.QueryContext(ctx,
		`SELECT (p.value ->> 0) / ?1 * ?1 AS b, m.key, min(m.value), avg(m.value), max(m.value)
		   FROM telemetry AS t, json_each(t.points) AS p, json_each(p.value, '$[1]') AS m
		  WHERE t.device_id = ?2 AND t.ts_min BETWEEN ?3 AND ?4 AND t.ts_max >= ?5
		    AND (p.value ->> 0) BETWEEN ?5 AND ?4 AND m.type IN ('integer', 'real')
		  GROUP BY b, m.key ORDER BY b, m.key`,
		ms, device, lo-chunkSpan.Milliseconds(), hi, lo)
	if err != nil {
		return nil, fmt.Errorf("telemetry buckets: %w", err)
	}
	defer rows.Close()
	out := []Bucket{}
	for rows.Next() {
		var b int64
		var key string
		var lo, avg, hi float64
		if err := rows.Scan(&b, &key, &lo, &avg, &hi); err != nil {
			return nil, fmt.Errorf("telemetry buckets: %w", err)
		}
		ts := time.UnixMilli(b).UTC()
		if len(out) == 0 || !out[len(out)-1].TS.Equal(ts) {
			out = append(out, Bucket{TS: ts, Min: map[string]float64{}, Avg: map[string]float64{}, Max: map[string]float64{}})
		}
		cur := &out[len(out)-1]
		cur.Min[key], cur.Avg[key], cur.Max[key] = lo, avg, hi
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("telemetry buckets: %w", err)
	}
	return out, nil
}
