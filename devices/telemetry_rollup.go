package devices

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// Rollups: per-minute and per-hour min, max, sum and count of each numeric
// metric of each device, kept for RollupRetention (beyond the raw
// history's Retention).
//
// The per-hour ones are rows of telemetry_1h, which the writer folds each
// batch into in the same transaction as its points. The per-minute ones
// are chunks of telemetry_1m (minuteChunk), each a device's minutes in the
// chunk encoding with four columns per metric; the pruner makes them from
// the raw chunks it removes, in the same transaction, so that a point is
// in exactly one of the raw history and the minute rollups (while the raw
// points are there, a device reporting every few seconds would pay for its
// minutes twice). A minute may be in two minute chunks (its points were in
// two raw chunks): queries merge.

// agg is an aggregate of numbers: their min, max, count and sum.
//
// The sum does not overflow: it is sum·2^scale, where scale is 0 while
// the sum is within a float64 (always, for any sensor's numbers) and
// above 0, with |sum| ≥ 2^1023, only while it is beyond one. So the mean
// (avg) of any finite numbers is right to a float64's precision: 1.7e308
// twice averages 1.7e308, not +Inf, and +1.7e308 and -1.7e308 together
// average 0, not NaN. A stored rollup holds the sum in one float64
// (storedSum; the hourly upsert adds them as upsertSQL says): beyond
// one, it is kept as ±MaxFloat64, which fromStored reads back as a bound.
type agg struct {
	min, max, sum float64
	scale         int
	n             int64
	// exp is the decimals that every number added has at most (so the
	// sum can be rounded back to an exact decimal), or -1.
	exp int
}

func (a *agg) add(v float64) {
	if a.n == 0 || v < a.min {
		a.min = v
	}
	if a.n == 0 || v > a.max {
		a.max = v
	}
	if s := a.sum + v; a.scale == 0 && !math.IsInf(s, 0) {
		a.sum = s
	} else {
		a.addScaled(v, 0)
	}
	a.n++
}

// addScaled adds x·2^k (x finite, k ≥ 0) to the sum, overflowing into
// scale.
func (a *agg) addScaled(x float64, k int) {
	if a.scale == 0 && k == 0 {
		if s := a.sum + x; !math.IsInf(s, 0) {
			a.sum = s
			return
		}
	}
	// Both terms scaled to below 2^1023: their sum is finite.
	e := max(a.scale, k) + 1
	a.sum = math.Ldexp(a.sum, a.scale-e) + math.Ldexp(x, k-e)
	a.scale = e
	a.normalize()
}

// normalize makes scale the least it can be (0 whenever the sum fits a
// float64).
func (a *agg) normalize() {
	if a.sum == 0 {
		a.scale = 0
		return
	}
	if a.scale == 0 {
		return
	}
	fr, e := math.Frexp(a.sum)
	if e += a.scale; e <= 1024 {
		a.sum, a.scale = math.Ldexp(fr, e), 0
	} else {
		a.sum, a.scale = math.Ldexp(fr, 1024), e-1024
	}
}

// addDecimal adds v and keeps exp.
func (a *agg) addDecimal(v float64) {
	if a.n == 0 {
		a.exp = 0
	}
	a.add(v)
	for a.exp >= 0 {
		if _, ok := mantissa(v, a.exp); ok {
			break
		}
		if a.exp++; a.exp == len(pow10) {
			a.exp = -1
		}
	}
}

// merge adds the aggregate b.
func (a *agg) merge(b agg) {
	if b.n == 0 {
		return
	}
	if a.n == 0 || b.min < a.min {
		a.min = b.min
	}
	if a.n == 0 || b.max > a.max {
		a.max = b.max
	}
	a.addScaled(b.sum, b.scale)
	a.n += b.n
}

// avg is the mean (of an aggregate of at least one number), within
// [min, max]: rounding may put sum/n just outside, as 0.1 three times
// (0.30000000000000004/3).
func (a *agg) avg() float64 {
	m := math.Ldexp(a.sum/float64(a.n), a.scale)
	if math.IsNaN(m) { // not from finite numbers
		return a.min/2 + a.max/2
	}
	return min(max(m, a.min), a.max)
}

// setMean makes the sum n·m.
func (a *agg) setMean(m float64) {
	fr, e := math.Frexp(m)
	a.sum, a.scale = fr*float64(a.n), e
	a.normalize()
}

// storedSum is the sum as a stored rollup keeps it: itself, or
// ±MaxFloat64 when it is beyond a float64.
func (a *agg) storedSum() float64 {
	if a.scale > 0 {
		return math.Copysign(math.MaxFloat64, a.sum)
	}
	return a.sum
}

// exactSum is storedSum rounded to the decimals of its numbers: what
// float addition lost, so that the sum stays a short decimal.
func (a *agg) exactSum() float64 {
	if a.exp < 0 || a.scale > 0 {
		return a.storedSum()
	}
	if m, ok := mantissa(math.Round(a.sum*pow10[a.exp])/pow10[a.exp], a.exp); ok {
		return float64(m) / pow10[a.exp]
	}
	return a.sum
}

// fromStored is the aggregate of a stored rollup (an hourly row, a
// minute of a minute chunk); false when no release would have stored it
// (no count, a bound that is not finite, min above max).
//
// A sum at ±MaxFloat64 is taken for one that reached it (storedSum,
// upsertSQL; a sum of exactly that is read as a bound too), and
// older releases stored ±Inf for a sum that overflowed and NaN where +Inf
// met -Inf: the mean of such a rollup is in [min, max] and, for a sum
// that reached +MaxFloat64, at least MaxFloat64/n (for -MaxFloat64, at
// most -MaxFloat64/n). The aggregate takes the middle of that range as
// its mean, so that it is finite, within the numbers' range, and exact
// where the range is one number (1.7e308 twice).
func fromStored(lo, hi, sum float64, n int64) (agg, bool) {
	if n < 1 || math.IsNaN(lo) || math.IsInf(lo, 0) || math.IsNaN(hi) || math.IsInf(hi, 0) || lo > hi {
		return agg{}, false
	}
	a := agg{min: lo, max: hi, sum: sum, n: n}
	if math.Abs(sum) < math.MaxFloat64 {
		return a, true
	}
	bound := math.MaxFloat64 / float64(n)
	switch {
	case sum > 0:
		lo = min(max(lo, bound), hi)
	case sum < 0:
		hi = max(min(hi, -bound), lo)
	}
	a.setMean(lo/2 + hi/2)
	return a, true
}

// rollups takes the numbers of points as they are written.
type rollups struct {
	dialect database.Dialect // of the hourly upsert
	hours   map[hourKey]*agg
	minutes map[string]*minuteChunk // open chunk per device
	pending []*minuteChunk
	// gen counts the writes: a write clears hours, and an hourSlot of
	// an earlier generation is stale.
	gen uint64
}

type hourKey struct {
	device, metric string
	ts             int64 // start of the hour, Unix ms
}

// newRollups returns rollups that keep the hourly aggregates (the
// writer's) or the minute chunks (the pruner's).
func newRollups(hours bool, d database.Dialect) *rollups {
	if hours {
		return &rollups{hours: make(map[hourKey]*agg), dialect: d}
	}
	return &rollups{minutes: make(map[string]*minuteChunk)}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// hourSlot remembers the aggregate a metric's numbers were last added
// to, so that consecutive points of one hour find it without a lookup:
// valid while r and gen are the rollups' and the hour is ts.
type hourSlot struct {
	r   *rollups
	gen uint64
	ts  int64
	a   *agg
}

// addTo adds v as add does, through slot s.
func (r *rollups) addTo(s *hourSlot, device, metric string, ts int64, v float64, now time.Time) {
	if r.minutes != nil {
		r.addMinute(device, metric, ts, v, now)
		return
	}
	hour := time.Hour.Milliseconds()
	h := floorDiv(ts, hour) * hour
	if s.a == nil || s.r != r || s.gen != r.gen || s.ts != h {
		k := hourKey{device, metric, h}
		a := r.hours[k]
		if a == nil {
			a = &agg{}
			r.hours[k] = a
		}
		*s = hourSlot{r: r, gen: r.gen, ts: h, a: a}
	}
	s.a.add(v)
}

func (r *rollups) add(device, metric string, ts int64, v float64, now time.Time) {
	if r.minutes != nil {
		r.addMinute(device, metric, ts, v, now)
		return
	}
	hour := time.Hour.Milliseconds()
	k := hourKey{device, metric, floorDiv(ts, hour) * hour}
	a := r.hours[k]
	if a == nil {
		a = &agg{}
		r.hours[k] = a
	}
	a.add(v)
}

func (r *rollups) addMinute(device, metric string, ts int64, v float64, now time.Time) {
	minute := floorDiv(ts, time.Minute.Milliseconds()) * time.Minute.Milliseconds()
	c := r.minutes[device]
	if c == nil || !c.add(metric, minute, v) {
		c = &minuteChunk{device: device, idx: map[string]int{}, maxMinutes: minuteChunkMinutes}
		r.minutes[device] = c
		c.add(metric, minute, v)
	}
	if !c.dirty {
		c.dirty = true
		r.pending = append(r.pending, c)
	}
	c.used = now
}

// Minute chunk bounds: minutes in one chunk (before its size says
// otherwise), and the time they may span.
const (
	minuteChunkMinutes = 240
	minuteChunkSpan    = 12 * time.Hour
)

// minuteChunk is one device's per-minute aggregates while they may grow.
type minuteChunk struct {
	device     string
	id         int64
	minutes    []int64 // in time order
	names      []string
	idx        map[string]int
	aggs       [][]agg // per metric, per minute
	maxMinutes int
	dirty      bool
	used       time.Time
}

// add adds v to metric's aggregate of minute; false if the minute does
// not belong in this chunk.
func (c *minuteChunk) add(metric string, minute int64, v float64) bool {
	i, found := slices.BinarySearch(c.minutes, minute)
	if !found {
		if len(c.minutes) >= c.maxMinutes ||
			(len(c.minutes) > 0 && max(minute, c.minutes[len(c.minutes)-1])-min(minute, c.minutes[0]) > minuteChunkSpan.Milliseconds()) {
			return false
		}
		c.minutes = slices.Insert(c.minutes, i, minute)
		for m := range c.aggs {
			c.aggs[m] = slices.Insert(c.aggs[m], i, agg{})
		}
	}
	m, ok := c.idx[metric]
	if !ok {
		m = len(c.names)
		c.idx[metric] = m
		c.names = append(c.names, metric)
		c.aggs = append(c.aggs, make([]agg, len(c.minutes), cap(c.minutes)))
	}
	c.aggs[m][i].addDecimal(v)
	return true
}

// Column name prefixes of a minute chunk: a metric's min, max, sum and
// count are four columns.
const (
	colMin   = "\x01"
	colMax   = "\x02"
	colSum   = "\x03"
	colCount = "\x04"
)

// chunk returns the aggregates as chunk columns.
func (c *minuteChunk) chunk() *chunkData {
	d := &chunkData{ts: c.minutes}
	n := len(c.minutes)
	for m, name := range c.names {
		cols := [4]chunkCol{{name: colMin + name}, {name: colMax + name}, {name: colSum + name}, {name: colCount + name}}
		for k := range cols {
			cols[k].syms, cols[k].nums = make([]uint32, n), make([]float64, n)
		}
		for i, a := range c.aggs[m] {
			if a.n == 0 {
				continue
			}
			for k, v := range [4]float64{a.min, a.max, a.exactSum(), float64(a.n)} {
				cols[k].syms[i], cols[k].nums[i] = symNumber, v
			}
		}
		d.cols = append(d.cols, cols[:]...)
	}
	return d
}

// minuteAggs reads the aggregates of a decoded minute chunk: fn is called
// per metric and minute.
func minuteAggs(d *chunkData, fn func(metric string, minute int64, a agg)) {
	byName := make(map[string]*chunkCol, len(d.cols))
	for i := range d.cols {
		byName[d.cols[i].name] = &d.cols[i]
	}
	for _, cnt := range d.cols {
		if len(cnt.name) == 0 || cnt.name[:1] != colCount {
			continue
		}
		metric := cnt.name[1:]
		lo, hi, sum := byName[colMin+metric], byName[colMax+metric], byName[colSum+metric]
		if lo == nil || hi == nil || sum == nil {
			continue
		}
		for i, ts := range d.ts {
			if cnt.syms[i] != symNumber || lo.syms[i] != symNumber || hi.syms[i] != symNumber || sum.syms[i] != symNumber || !(cnt.nums[i] >= 1 && cnt.nums[i] <= maxMantissa) {
				continue
			}
			if a, ok := fromStored(lo.nums[i], hi.nums[i], sum.nums[i], int64(cnt.nums[i])); ok {
				fn(metric, ts, a)
			}
		}
	}
}

// upsertRows is how many hourly aggregates one statement carries.
const upsertRows = 32

// write writes the hourly aggregates and the changed minute chunks.
func (r *rollups) write(ctx context.Context, tx *sql.Tx) error {
	if len(r.hours) > 0 {
		keys := slices.Collect(maps.Keys(r.hours))
		if r.dialect == database.Postgres {
			// In key order: two nodes' upserts never wait for each
			// other in a cycle.
			slices.SortFunc(keys, compareHourKeys)
		}
		if err := r.writeHours(ctx, tx, keys); err != nil {
			return err
		}
	}
	s, err := prepareChunkWrites(ctx, tx, r.dialect, "telemetry_1m")
	if err != nil {
		return err
	}
	defer s.close()
	var buf []byte
	for _, c := range r.pending {
		c.dirty = false
		d := c.chunk()
		buf = encodeChunk(buf[:0], d)
		gone, err := s.put(ctx, c.device, &c.id, d.ts, buf)
		if err != nil {
			return fmt.Errorf("telemetry rollups: %w", err)
		}
		n := len(c.minutes)
		c.maxMinutes = min(minuteChunkMinutes, max(n, n*chunkTargetBytes/len(buf)))
		if (gone || n >= c.maxMinutes) && r.minutes[c.device] == c {
			delete(r.minutes, c.device)
		}
	}
	return nil
}

// written ends a write, as chunkBuilder.written.
func (r *rollups) written(ok bool) {
	if !ok {
		for _, c := range r.pending {
			if r.minutes[c.device] == c {
				delete(r.minutes, c.device)
			}
		}
	}
	r.pending = r.pending[:0]
	clear(r.hours)
	r.gen++
}

// compareHourKeys orders hourly aggregates by device, hour and metric.
func compareHourKeys(a, b hourKey) int {
	return cmp.Or(strings.Compare(a.device, b.device), cmp.Compare(a.ts, b.ts), strings.Compare(a.metric, b.metric))
}

// writeHours writes the hourly aggregates of keys, in their order.
func (r *rollups) writeHours(ctx context.Context, tx *sql.Tx, keys []hourKey) error {
	if len(keys) == 0 {
		return nil
	}
	full, err := tx.PrepareContext(ctx, upsertSQL(r.dialect, upsertRows))
	if err != nil {
		return fmt.Errorf("telemetry rollups: prepare: %w", err)
	}
	defer full.Close()
	args := make([]any, 0, 7*upsertRows)
	flush := func() error {
		var err error
		if len(args) == 7*upsertRows {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, upsertSQL(r.dialect, len(args)/7), args...)
		}
		args = args[:0]
		if err != nil {
			return fmt.Errorf("telemetry rollups: %w", err)
		}
		return nil
	}
	for _, k := range keys {
		a := r.hours[k]
		args = append(args, k.device, k.metric, k.ts, a.min, a.max, a.storedSum(), a.n)
		if len(args) == cap(args) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if len(args) > 0 {
		return flush()
	}
	return nil
}

// upsertSQL adds rows hourly rollups, merging each into the one stored
// (PostgreSQL names the conflict and calls SQLite's two-argument min and
// max LEAST and GREATEST). The sums are added as saturatingAdd says.
func upsertSQL(d database.Dialect, rows int) string {
	b := make([]byte, 0, 512+16*rows)
	b = append(b, "INSERT INTO telemetry_1h(device_id, metric, ts, min, max, sum, n) VALUES "...)
	for i := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "(?,?,?,?,?,?,?)"...)
	}
	if d == database.Postgres {
		b = append(b, " ON CONFLICT (device_id, ts, metric) DO UPDATE SET min = LEAST(telemetry_1h.min, excluded.min), max = GREATEST(telemetry_1h.max, excluded.max), sum = "...)
		b = append(b, saturatingAdd("telemetry_1h.sum", "excluded.sum")...)
		b = append(b, ", n = telemetry_1h.n + excluded.n"...)
		return string(b)
	}
	b = append(b, " ON CONFLICT DO UPDATE SET min = min(min, excluded.min), max = max(max, excluded.max), sum = "...)
	b = append(b, saturatingAdd("sum", "excluded.sum")...)
	b = append(b, ", n = n + excluded.n"...)
	return string(b)
}

// saturatingAdd is SQL for the sum of the float columns a and b, or
// ±MaxFloat64 where it would be beyond a float64: PostgreSQL fails the
// statement on an overflow (and the writer's whole batch with it), SQLite
// makes +Inf, and NaN (+Inf meeting -Inf) is NULL to SQLite, which the
// NOT NULL column refuses. b is finite (storedSum). a may be an older
// release's ±Inf, which becomes ±MaxFloat64 where b has its sign and
// stays otherwise, or on PostgreSQL its NaN, which PostgreSQL orders
// above every number: MaxFloat64 where b is positive, NaN otherwise
// (fromStored reads each of them). No multiplication or division:
// PostgreSQL fails those on an underflow (5e-324 / 2).
//
// The test is a > g - b with g the float64 just below MaxFloat64: where
// a ≤ g - b (rounded up by at most 2^970), a + b ≤ MaxFloat64 - 2^970,
// which rounds to a finite float64.
func saturatingAdd(a, b string) string {
	top := strconv.FormatFloat(math.MaxFloat64, 'g', -1, 64)
	g := strconv.FormatFloat(math.Nextafter(math.MaxFloat64, 0), 'g', -1, 64)
	return "CASE WHEN " + a + " > 0 AND " + b + " > 0 AND " + a + " > " + g + " - " + b + " THEN " + top +
		" WHEN " + a + " < 0 AND " + b + " < 0 AND " + a + " < -" + g + " - " + b + " THEN -" + top +
		" ELSE " + a + " + " + b + " END"
}
