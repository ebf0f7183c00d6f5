package devices

import (
	"context"
	"encoding/json"
	"fmt"
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
	rows, err := t.db.R.QueryContext(ctx,
		`SELECT ts, vals FROM telemetry WHERE device_id = ? AND ts BETWEEN ? AND ? ORDER BY ts, id LIMIT ?`,
		device, from.UnixMilli(), to.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("telemetry points: %w", err)
	}
	defer rows.Close()
	out := []Point{}
	for rows.Next() {
		var ts int64
		var vals string
		if err := rows.Scan(&ts, &vals); err != nil {
			return nil, fmt.Errorf("telemetry points: %w", err)
		}
		p := Point{TS: time.UnixMilli(ts).UTC()}
		if err := json.Unmarshal([]byte(vals), &p.Values); err != nil {
			return nil, fmt.Errorf("telemetry points: stored values: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("telemetry points: %w", err)
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
	if n := (to.UnixMilli() - from.UnixMilli()) / ms; n > MaxTelemetryBuckets {
		return nil, invalid("step", "makes %d buckets (at most %d): choose a longer step or a shorter range", n, MaxTelemetryBuckets)
	}
	rows, err := t.db.R.QueryContext(ctx,
		`SELECT (t.ts / ?1) * ?1 AS b, j.key, min(j.value), avg(j.value), max(j.value)
		   FROM telemetry AS t, json_each(t.vals) AS j
		  WHERE t.device_id = ?2 AND t.ts BETWEEN ?3 AND ?4 AND j.type IN ('integer', 'real')
		  GROUP BY b, j.key ORDER BY b, j.key`,
		ms, device, from.UnixMilli(), to.UnixMilli())
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
