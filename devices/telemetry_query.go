package devices

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"
)

// Query limits.
const (
	MaxTelemetryPoints  = 10000 // points one query returns
	MaxTelemetryBuckets = 10000 // buckets one query returns
)

// Bucket is the min, avg, max and count of each numeric metric over
// [TS, TS+step).
type Bucket struct {
	TS    time.Time          `json:"ts"`
	Min   map[string]float64 `json:"min"`
	Avg   map[string]float64 `json:"avg"`
	Max   map[string]float64 `json:"max"`
	Count map[string]int64   `json:"count"`
}

// queryRange is [from, to] in Unix ms, narrowed to ±2^62 ms (146
// million years, far beyond any time a point is stored at): the scans
// subtract a chunk's span from lo and round it down to minutes and
// hours, which wrapped around for a time near the ends of int64 (a query
// from Unix ms -9223372036854775808 found nothing).
func queryRange(from, to time.Time) (lo, hi int64) {
	const bound = 1 << 62
	return min(max(from.UnixMilli(), -bound), bound), min(max(to.UnixMilli(), -bound), bound)
}

// eachChunk calls fn with each of device's chunks in table (telemetry_chunks,
// or telemetry_1m) that may hold points in [lo, hi] (Unix ms), in order of
// their first point, decoded. fn returns false to stop.
func (t *Telemetry) eachChunk(ctx context.Context, table, device string, lo, hi int64, fn func(*chunkData) bool) error {
	return t.eachChunkFrom(ctx, table, device, lo, hi, chunkCursor{}, func(c *chunkData, _ chunkCursor) bool { return fn(c) })
}

// chunkCursor is a chunk row's place in eachChunk's order: its first
// point's time and its id. The zero cursor is before every row.
type chunkCursor struct {
	ts, id int64
	set    bool
}

// eachChunkFrom is eachChunk from the row at cursor from on (that row
// included), giving fn each row's cursor as well.
func (t *Telemetry) eachChunkFrom(ctx context.Context, table, device string, lo, hi int64, from chunkCursor, fn func(*chunkData, chunkCursor) bool) error {
	span := chunkSpan
	if table == "telemetry_1m" {
		span = minuteChunkSpan
	}
	q := `SELECT ts_min, id, data FROM ` + table + `
		  WHERE device_id = ? AND ts_min BETWEEN ? AND ? AND ts_max >= ?`
	args := []any{device, lo - span.Milliseconds(), hi, lo}
	if from.set {
		q += ` AND (ts_min > ? OR (ts_min = ? AND id >= ?))`
		args = append(args, from.ts, from.ts, from.id)
	}
	rows, err := t.db.R.QueryContext(ctx, q+` ORDER BY ts_min, id`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var at chunkCursor
		var data []byte
		if err := rows.Scan(&at.ts, &at.id, &data); err != nil {
			return err
		}
		at.set = true
		c, err := decodeChunk(data, nil)
		if err != nil {
			return fmt.Errorf("stored chunk: %w", err)
		}
		if !fn(c, at) {
			return nil
		}
	}
	return rows.Err()
}

// Points returns device's points with from <= ts <= to in time order, at
// most limit of them (the earliest); limit is 1 to MaxTelemetryPoints.
func (t *Telemetry) Points(ctx context.Context, device string, from, to time.Time, limit int) ([]Point, error) {
	var out []Point
	err := t.EachPoint(ctx, device, from, to, limit, func(p Point) error {
		out = append(out, p)
		return nil
	})
	if out == nil && err == nil {
		out = []Point{}
	}
	return out, err
}

// EachPoint calls fn with each of the points Points returns, in time
// order, without holding them all as Points; an error from fn stops it.
func (t *Telemetry) EachPoint(ctx context.Context, device string, from, to time.Time, limit int, fn func(Point) error) error {
	if limit < 1 || limit > MaxTelemetryPoints {
		return invalid("limit", "must be between 1 and %d", MaxTelemetryPoints)
	}
	if to.Before(from) {
		return invalid("to", "is before from")
	}
	lo, hi := queryRange(from, to)
	// The points go out a page at a time, each page's rows read and
	// closed before its points go out: a client reading its answer slowly
	// holds no read transaction open (which would keep SQLite's WAL from
	// being checkpointed), and the chunks decoded at once stay near
	// pointsPageBytes instead of every chunk of up to limit points (10,000
	// points of 255 long metrics decoded to about 650 MB before the first
	// went out, when the answer stops at 32 MiB). Chunks come in order of
	// their first point and keep their points in time order, so once a
	// chunk starting at F is read, no later chunk holds a point before F:
	// a page reads chunks until it holds pointsPageBytes and the next
	// chunk starts after the earliest point it holds, and gives out the
	// points before that next chunk's start; the next page starts at
	// that chunk. (A page's rows are read apart from the last page's: a
	// point written meanwhile may be in the answer or not.)
	type ref struct {
		ts int64
		c  *chunkData
		i  int
	}
	var pending []ref // the points read and not given out, in time order
	given := 0
	texts := map[string]any{} // decoded dictionary values
	give := func(g ref) error {
		p := Point{TS: time.UnixMilli(g.ts).UTC(), Values: make(map[string]any, len(g.c.cols))}
		for j := range g.c.cols {
			col := &g.c.cols[j]
			switch s := col.syms[g.i]; {
			case s == symNumber:
				p.Values[col.name] = col.nums[g.i]
			case s >= symDict:
				text := col.dict[s-symDict]
				v, ok := texts[text]
				if !ok {
					if err := json.Unmarshal([]byte(text), &v); err != nil {
						return fmt.Errorf("telemetry points: stored value: %w", err)
					}
					if len(texts) >= 4096 {
						clear(texts)
					}
					texts[text] = v
				}
				p.Values[col.name] = v
			}
		}
		given++
		return fn(p)
	}
	var at chunkCursor
	floor := lo
	for {
		var next chunkCursor // where the next page starts (unset: no next page)
		held := 0
		err := t.eachChunkFrom(ctx, "telemetry_chunks", device, lo, hi, at, func(c *chunkData, cur chunkCursor) bool {
			want := limit - given
			// Once limit points are in hand and this chunk starts after
			// the last of them, nothing later can be among the earliest.
			if len(pending) >= want && c.ts[0] > pending[want-1].ts {
				return false
			}
			if held >= pointsPageBytes && len(pending) > 0 && pending[0].ts < c.ts[0] {
				next = cur
				return false
			}
			for i, ts := range c.ts {
				// (ts >= floor: a chunk rewritten since the last page
				// began cannot give out a point before one given.)
				if ts >= floor && ts <= hi {
					pending = append(pending, ref{ts, c, i})
				}
			}
			slices.SortStableFunc(pending, func(a, b ref) int { return cmp.Compare(a.ts, b.ts) })
			if len(pending) > want {
				clear(pending[want:])
				pending = pending[:want]
			}
			held += c.heapSize()
			return true
		})
		if err != nil {
			return fmt.Errorf("telemetry points: %w", err)
		}
		until := int64(math.MaxInt64)
		if next.set {
			until = next.ts
		}
		k := 0
		for ; k < len(pending) && pending[k].ts < until; k++ {
			if err := give(pending[k]); err != nil {
				return err
			}
		}
		pending = append([]ref(nil), pending[k:]...)
		if !next.set || given >= limit {
			return nil
		}
		at, floor = next, next.ts
	}
}

// pointsPageBytes is about how much decoded chunk memory EachPoint holds
// before it gives points out.
const pointsPageBytes = 8 << 20

// Buckets returns, for each step-long bucket (aligned to multiples of step
// since the Unix epoch) in [from, to] that holds points, the min, avg, max
// and count of each numeric metric, in time order.
//
// It reads the coarsest level that serves the step: the per-hour rollups
// when step is a whole number of hours, the per-minute ones (and the raw
// points not yet pruned into them) when it is a whole number of minutes,
// else the raw points. With a rollup, the first and last buckets cover
// whole minutes (hours), even where from and to fall inside one.
func (t *Telemetry) Buckets(ctx context.Context, device string, from, to time.Time, step time.Duration) ([]Bucket, error) {
	if step < time.Millisecond {
		return nil, invalid("step", "must be at least 1ms")
	}
	if to.Before(from) {
		return nil, invalid("to", "is before from")
	}
	ms := step.Milliseconds()
	// In uint64: to-from in ms overflows int64 for a range of more than
	// 292 million years, and would pass for a few buckets.
	if n := (uint64(to.UnixMilli()) - uint64(from.UnixMilli())) / uint64(ms); n > MaxTelemetryBuckets {
		return nil, invalid("step", "makes %d buckets (at most %d): choose a longer step or a shorter range", n, MaxTelemetryBuckets)
	}
	lo, hi := queryRange(from, to)
	if step%time.Hour == 0 {
		return t.hourBuckets(ctx, device, lo, hi, ms)
	}
	aggs := map[bucketKey]*agg{}
	if step%time.Minute == 0 {
		minute := time.Minute.Milliseconds()
		err := t.eachChunk(ctx, "telemetry_1m", device, floorDiv(lo, minute)*minute, hi, func(c *chunkData) bool {
			minuteAggs(c, func(metric string, ts int64, a agg) {
				if ts < floorDiv(lo, minute)*minute || ts > hi {
					return
				}
				k := bucketKey{floorDiv(ts, ms) * ms, metric}
				if aggs[k] == nil {
					aggs[k] = &agg{}
				}
				aggs[k].merge(a)
			})
			return true
		})
		if err != nil {
			return nil, fmt.Errorf("telemetry buckets: %w", err)
		}
		// The raw points not yet folded into minutes (rounded out to
		// whole minutes, as the rollups are).
		lo = floorDiv(lo, minute) * minute
		hi = floorDiv(hi, minute)*minute + minute - 1
	}
	err := t.eachChunk(ctx, "telemetry_chunks", device, lo, hi, func(c *chunkData) bool {
		for j := range c.cols {
			col := &c.cols[j]
			var a *agg // of bucket cur: points come in time order
			cur := int64(math.MinInt64)
			for i, ts := range c.ts {
				if ts < lo || ts > hi || col.syms[i] != symNumber {
					continue
				}
				if b := floorDiv(ts, ms) * ms; b != cur || a == nil {
					k := bucketKey{b, col.name}
					if a = aggs[k]; a == nil {
						a = &agg{}
						aggs[k] = a
					}
					cur = b
				}
				a.add(col.nums[i])
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("telemetry buckets: %w", err)
	}
	return bucketsOf(aggs), nil
}

type bucketKey struct {
	b      int64
	metric string
}

// bucketsOf returns aggregates as buckets in time order.
func bucketsOf(aggs map[bucketKey]*agg) []Bucket {
	keys := make([]bucketKey, 0, len(aggs))
	for k := range aggs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b bucketKey) int {
		return cmp.Or(cmp.Compare(a.b, b.b), cmp.Compare(a.metric, b.metric))
	})
	out := []Bucket{}
	for _, k := range keys {
		out = addToBuckets(out, k.b, k.metric, aggs[k])
	}
	return out
}

// addToBuckets adds one metric's aggregate of bucket b (in time order).
func addToBuckets(out []Bucket, b int64, metric string, a *agg) []Bucket {
	ts := time.UnixMilli(b).UTC()
	if len(out) == 0 || !out[len(out)-1].TS.Equal(ts) {
		out = append(out, Bucket{TS: ts, Min: map[string]float64{}, Avg: map[string]float64{}, Max: map[string]float64{}, Count: map[string]int64{}})
	}
	cur := &out[len(out)-1]
	cur.Min[metric], cur.Avg[metric], cur.Max[metric], cur.Count[metric] = a.min, a.avg(), a.max, a.n
	return out
}

// hourBuckets reads buckets of ms (whole hours) from the hourly rollups.
func (t *Telemetry) hourBuckets(ctx context.Context, device string, lo, hi, ms int64) ([]Bucket, error) {
	hour := time.Hour.Milliseconds()
	// In primary key order, aggregated here: cheaper than SQLite's GROUP
	// BY, which sorts.
	rows, err := t.db.R.QueryContext(ctx,
		`SELECT ts, metric, min, max, sum, n FROM telemetry_1h
		  WHERE device_id = ? AND ts BETWEEN ? AND ?`,
		device, floorDiv(lo, hour)*hour, hi)
	if err != nil {
		return nil, fmt.Errorf("telemetry buckets: %w", err)
	}
	defer rows.Close()
	aggs := map[bucketKey]*agg{}
	var metric []byte
	for rows.Next() {
		var ts, n int64
		var lo, hi, sum float64
		if err := rows.Scan(&ts, &metric, &lo, &hi, &sum, &n); err != nil {
			return nil, fmt.Errorf("telemetry buckets: %w", err)
		}
		a, ok := fromStored(lo, hi, sum, n)
		if !ok {
			continue
		}
		b := floorDiv(ts, ms) * ms
		cur := aggs[bucketKey{b, string(metric)}]
		if cur == nil {
			cur = &agg{}
			aggs[bucketKey{b, string(metric)}] = cur
		}
		cur.merge(a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("telemetry buckets: %w", err)
	}
	return bucketsOf(aggs), nil
}
