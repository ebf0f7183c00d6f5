package devices

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// TestTelemetryRollups: pruning moves points into per-minute rollups that
// a query with a step of whole minutes still reads (merged with the raw
// points not pruned), the hourly rollups have every point from the start,
// and the rollup retention removes both.
func TestTelemetryRollups(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour, PruneChunk: 3})
	now := time.Now()
	base := now.Add(-48 * time.Hour).Truncate(time.Hour)
	type want struct {
		min, max float64
		sum      int64 // tenths
		n        int64
	}
	minutes := map[int64]*want{}
	add := func(ts time.Time, tenths int64) {
		s := mustSample(t, fmt.Sprintf(`{"v":%d.%d,"s":"x"}`, tenths/10, tenths%10))
		s.TS = ts
		if !tel.Add("d1", s, now) {
			t.Fatal("Add refused")
		}
		m := ts.Truncate(time.Minute).UnixMilli()
		w := minutes[m]
		v := float64(tenths) / 10
		if w == nil {
			w = &want{min: v, max: v}
			minutes[m] = w
		}
		w.min, w.max = min(w.min, v), max(w.max, v)
		w.sum += tenths
		w.n++
	}
	// Three hours two days ago (to be pruned), one hour just now.
	for i := range 3 * 360 {
		add(base.Add(time.Duration(i)*10*time.Second), int64(200+i%37))
	}
	recent := now.Add(-time.Hour).Truncate(time.Minute)
	for i := range 360 {
		add(recent.Add(time.Duration(i)*10*time.Second), int64(100+i%11))
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := tel.PruneBefore(ctx, now.Add(-24*time.Hour)); err != nil || n != 3*360 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	if pts, err := tel.Points(ctx, "d1", base, base.Add(3*time.Hour), 10); err != nil || len(pts) != 0 {
		t.Fatalf("pruned points still there: %d, %v", len(pts), err)
	}

	check := func(bs []Bucket, step time.Duration) int64 {
		t.Helper()
		var total int64
		for _, b := range bs {
			var w want
			for m, mw := range minutes {
				if m >= b.TS.UnixMilli() && m < b.TS.Add(step).UnixMilli() {
					if w.n == 0 || mw.min < w.min {
						w.min = mw.min
					}
					if w.n == 0 || mw.max > w.max {
						w.max = mw.max
					}
					w.sum += mw.sum
					w.n += mw.n
				}
			}
			avg := float64(w.sum) / 10 / float64(w.n)
			if b.Count["v"] != w.n || b.Min["v"] != w.min || b.Max["v"] != w.max || math.Abs(b.Avg["v"]-avg) > 1e-9 {
				t.Fatalf("step %s bucket %s: count %d min %v max %v avg %v, want %d %v %v %v",
					step, b.TS, b.Count["v"], b.Min["v"], b.Max["v"], b.Avg["v"], w.n, w.min, w.max, avg)
			}
			if _, ok := b.Count["s"]; ok {
				t.Fatal("a string metric has a bucket")
			}
			total += w.n
		}
		return total
	}
	for _, step := range []time.Duration{time.Minute, 10 * time.Minute, time.Hour, 24 * time.Hour} {
		bs, err := tel.Buckets(ctx, "d1", base.Add(-time.Hour), now, step)
		if err != nil {
			t.Fatal(err)
		}
		if total := check(bs, step); total != 4*360 {
			t.Errorf("step %s: %d points in the buckets, want %d", step, total, 4*360)
		}
	}

	// Past the rollup retention, the old minutes and hours go.
	if err := tel.PruneRollupsBefore(ctx, now.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, step := range []time.Duration{time.Minute, time.Hour} {
		bs, err := tel.Buckets(ctx, "d1", base.Add(-time.Hour), now, step)
		if err != nil {
			t.Fatal(err)
		}
		if total := check(bs, step); total != 360 {
			t.Errorf("step %s after the rollup retention: %d points, want 360", step, total)
		}
	}
}

// TestTelemetryOpenChunk: a device reporting once per flush keeps one
// growing chunk (a base row and a tail row), every point there once and
// in order, also one that comes late; once the device is deleted its
// open chunk does not bring its history back (points still in flight
// for the id are stored as a new chunk), and a device registered again
// under the id starts clean.
func TestTelemetryOpenChunk(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	add := func(ts time.Time, v int) {
		t.Helper()
		s := mustSample(t, fmt.Sprintf(`{"v":%d}`, v))
		s.TS = ts
		if !tel.Add("d1", s, time.Now()) {
			t.Fatal("Add refused")
		}
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rows := func() (n int) {
		t.Helper()
		if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_chunks WHERE device_id = 'd1'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i := range 300 {
		add(base.Add(time.Duration(i)*time.Second), i)
	}
	add(base.Add(5500*time.Millisecond), -1) // late, between points 5 and 6
	pts, err := tel.Points(ctx, "d1", base, base.Add(time.Hour), MaxTelemetryPoints)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 301 {
		t.Fatalf("%d points, want 301", len(pts))
	}
	for i, p := range pts {
		want := float64(i)
		switch {
		case i == 6:
			want = -1
		case i > 6:
			want = float64(i - 1)
		}
		if p.Values["v"] != want {
			t.Fatalf("point %d: %v, want %v", i, p.Values["v"], want)
		}
	}
	if n := rows(); n > 2 {
		t.Errorf("%d rows for one growing chunk, want at most 2", n)
	}

	reg := testRegistry(t, db)
	reg.Attach(tel)
	if err := reg.DeleteDevice(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		add(base.Add(time.Duration(400+i)*time.Second), 1000+i)
	}
	if _, _, err := reg.CreateDevice(ctx, NewDevice{ID: "d1", Name: "d1"}); err != nil {
		t.Fatal(err)
	}
	add(base.Add(500*time.Second), 2000)
	pts, err = tel.Points(ctx, "d1", base, base.Add(time.Hour), MaxTelemetryPoints)
	if err != nil || len(pts) == 0 || len(pts) > 4 || pts[len(pts)-1].Values["v"] != 2000.0 {
		t.Fatalf("registered again: %v, %v", pts, err)
	}
	for _, p := range pts {
		if p.Values["v"].(float64) < 1000 {
			t.Fatalf("the deleted device's history came back: %v", pts)
		}
	}
}

// exactMean is the mean of vs computed exactly, rounded once.
func exactMean(vs []float64) float64 {
	sum := new(big.Float).SetPrec(2200) // every float64 exactly, and their sum
	for _, v := range vs {
		sum.Add(sum, new(big.Float).SetFloat64(v))
	}
	m, _ := sum.Quo(sum, new(big.Float).SetInt64(int64(len(vs)))).Float64()
	return m
}

// checkMean fails unless got is finite, within [min, max] of vs and
// within tol·max|v| of their exact mean.
func checkMean(t *testing.T, what string, got float64, vs []float64, tol float64) {
	t.Helper()
	lo, hi, big := vs[0], vs[0], 0.0
	for _, v := range vs {
		lo, hi, big = min(lo, v), max(hi, v), max(big, math.Abs(v))
	}
	want := exactMean(vs)
	if math.IsNaN(got) || math.IsInf(got, 0) || got < lo || got > hi || math.Abs(got-want) > tol*big {
		t.Fatalf("%s: mean %v, want %v (within %g of it, in [%v, %v])", what, got, want, tol*big, lo, hi)
	}
}

// TestAggOverflow: the mean of any finite numbers is right to a float64's
// precision, however large their sum; the same whichever way the numbers
// are split into aggregates and merged; and ordinary numbers' mean is
// sum/n as it always was.
func TestAggOverflow(t *testing.T) {
	const m = math.MaxFloat64
	many := func(n int, f func(i int) float64) []float64 {
		vs := make([]float64, n)
		for i := range vs {
			vs[i] = f(i)
		}
		return vs
	}
	for _, tc := range []struct {
		name string
		vs   []float64
	}{
		{"1.7e308 twice", []float64{1.7e308, 1.7e308}},
		{"-1.7e308 twice", []float64{-1.7e308, -1.7e308}},
		{"+ then -", []float64{1.7e308, 1.7e308, -1.7e308, -1.7e308}},
		{"+Inf meets -Inf", []float64{1.7e308, 1.7e308, 1.7e308, -1.7e308, -1.7e308, -1.7e308, -1.7e308, 1}},
		{"MaxFloat64 10000 times", many(10000, func(int) float64 { return m })},
		{"-MaxFloat64 and MaxFloat64 alternating", many(1001, func(i int) float64 { return float64(1-2*(i%2)) * m })},
		{"near the top", many(5000, func(i int) float64 { return m * (0.5 + float64(i%97)/200) })},
		{"huge and tiny", []float64{m, m, 5e-324, -m, 1e-300, m}},
		{"ordinary", many(1000, func(i int) float64 { return 20 + float64(i%37)/10 })},
		{"subnormal", []float64{5e-324, 5e-324, 1e-320}},
	} {
		var all agg
		for _, v := range tc.vs {
			all.add(v)
		}
		checkMean(t, tc.name, all.avg(), tc.vs, 1e-12)
		if all.n != int64(len(tc.vs)) {
			t.Fatalf("%s: count %d", tc.name, all.n)
		}
		// Split in pieces (minutes of an hour, hours of a day) and
		// merged: the same mean.
		for _, parts := range []int{2, 3, 7, 60} {
			var merged agg
			for p := range parts {
				var a agg
				for i := p; i < len(tc.vs); i += parts {
					a.add(tc.vs[i])
				}
				merged.merge(a)
			}
			checkMean(t, fmt.Sprintf("%s in %d parts", tc.name, parts), merged.avg(), tc.vs, 1e-12)
			if merged.min != all.min || merged.max != all.max || merged.n != all.n {
				t.Fatalf("%s in %d parts: %+v, want %+v", tc.name, parts, merged, all)
			}
		}
	}

	// The sum of ordinary numbers is sum/n, bit for bit, with no scale.
	var a agg
	sum := 0.0
	for i := range 1000 {
		v := float64(i%37)/10 - 1.5
		a.add(v)
		sum += v
	}
	if a.scale != 0 || a.sum != sum || a.storedSum() != sum {
		t.Fatalf("ordinary numbers: sum %v scale %d stored %v, want %v", a.sum, a.scale, a.storedSum(), sum)
	}
	// The mean of one number three times is that number.
	var tenth agg
	for range 3 {
		tenth.add(0.1)
	}
	if tenth.avg() != 0.1 {
		t.Fatalf("0.1 three times: mean %v", tenth.avg())
	}
}

// TestAggStored: a sum beyond a float64 is stored as ±MaxFloat64 and read
// back as a bound; the sums older releases stored for an overflow (±Inf,
// NaN) read back finite, within [min, max]; rows no release writes are
// left out.
func TestAggStored(t *testing.T) {
	const m = math.MaxFloat64
	var a agg
	a.add(1.7e308)
	a.add(1.7e308)
	if s := a.storedSum(); s != m {
		t.Fatalf("stored sum of 1.7e308 twice: %v", s)
	}
	var neg agg
	neg.add(-1.7e308)
	neg.add(-1.7e308)
	if s := neg.exactSum(); s != -m {
		t.Fatalf("stored sum of -1.7e308 twice (minute chunk): %v", s)
	}
	for _, tc := range []struct {
		name          string
		lo, hi, sum   float64
		n             int64
		want, wlo, wh float64 // the mean, or a range for it
	}{
		{"saturated, one number", 1.7e308, 1.7e308, m, 2, 1.7e308, 0, 0},
		{"older +Inf, one number", 1.7e308, 1.7e308, math.Inf(1), 2, 1.7e308, 0, 0},
		{"older -Inf, one number", -1.7e308, -1.7e308, math.Inf(-1), 2, -1.7e308, 0, 0},
		{"older +Inf", -1e308, 1.7e308, math.Inf(1), 3, math.NaN(), m / 3, 1.7e308},
		{"older -Inf", -1.7e308, 1e308, math.Inf(-1), 3, math.NaN(), -1.7e308, -m / 3},
		{"older NaN", -1.7e308, 1.7e308, math.NaN(), 4, 0, 0, 0},
		{"older NaN, lopsided", 1e308, 1.7e308, math.NaN(), 4, 1.35e308, 0, 0},
		{"a sum outside n·[min, max]", 1, 2, 1e6, 3, 2, 0, 0},
		{"ordinary", 1, 3, 6, 3, 2, 0, 0},
	} {
		a, ok := fromStored(tc.lo, tc.hi, tc.sum, tc.n)
		if !ok {
			t.Fatalf("%s: refused", tc.name)
		}
		got := a.avg()
		if math.IsNaN(got) || math.IsInf(got, 0) || got < tc.lo || got > tc.hi {
			t.Fatalf("%s: mean %v, not finite in [%v, %v]", tc.name, got, tc.lo, tc.hi)
		}
		if !math.IsNaN(tc.want) && math.Abs(got-tc.want) > 1e-12*math.Abs(tc.want) {
			t.Fatalf("%s: mean %v, want %v", tc.name, got, tc.want)
		}
		if math.IsNaN(tc.want) && (got < tc.wlo || got > tc.wh) {
			t.Fatalf("%s: mean %v, want in [%v, %v]", tc.name, got, tc.wlo, tc.wh)
		}
		// Merged with more, it still counts as n numbers of that mean.
		var more agg
		more.merge(a)
		more.merge(a)
		if m2 := more.avg(); math.Abs(m2-got) > 1e-12*math.Abs(got) || more.n != 2*tc.n {
			t.Fatalf("%s merged with itself: mean %v count %d, want %v %d", tc.name, m2, more.n, got, 2*tc.n)
		}
	}
	for _, bad := range [][4]float64{
		{1, 2, 3, 0}, {1, 2, 3, -1}, {math.NaN(), 2, 3, 1}, {1, math.Inf(1), 3, 1}, {math.Inf(-1), 2, 3, 1}, {3, 2, 3, 1},
	} {
		if a, ok := fromStored(bad[0], bad[1], bad[2], int64(bad[3])); ok {
			t.Errorf("fromStored%v: %+v, want refused", bad, a)
		}
	}
}

// FuzzAggregate: for any finite numbers, the mean is finite, within their
// range and right to a float64's precision however they are split into
// aggregates and merged; stored and read back (as the minute chunks and
// hourly rows keep them), it is finite and within their range, and the
// same where the sum fits a float64.
//
//	go test -run XXX -fuzz FuzzAggregate ./devices/
func FuzzAggregate(f *testing.F) {
	seed := func(vs ...float64) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
		return b
	}
	f.Add(seed(1.7e308, 1.7e308), uint8(1))
	f.Add(seed(1.7e308, -1.7e308, 1.7e308, -1.7e308, 1.7e308), uint8(2))
	f.Add(seed(math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, -5e-324), uint8(3))
	f.Add(seed(21.5, 21.7, 21.6, 22), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, parts uint8) {
		var vs []float64
		for ; len(b) >= 8 && len(vs) < 1000; b = b[8:] {
			v := math.Float64frombits(binary.LittleEndian.Uint64(b))
			if !math.IsNaN(v) && !math.IsInf(v, 0) { // as the parser takes them
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			return
		}
		k := int(parts%16) + 1
		var merged, stored agg
		for p := range k {
			var a agg
			for i := p; i < len(vs); i += k {
				a.addDecimal(vs[i])
			}
			if a.n == 0 {
				continue
			}
			merged.merge(a)
			s, ok := fromStored(a.min, a.max, a.exactSum(), a.n)
			if !ok {
				t.Fatalf("part %d: stored %+v does not read back", p, a)
			}
			if a.scale == 0 && math.Abs(a.sum) < math.MaxFloat64 && a.exp < 0 && s.avg() != a.avg() {
				t.Fatalf("part %d: mean %v stored, %v before", p, s.avg(), a.avg())
			}
			stored.merge(s)
		}
		// n numbers summed one by one lose up to n roundings.
		checkMean(t, "merged", merged.avg(), vs, 1e-15*float64(len(vs)+1))
		lo, hi := merged.min, merged.max
		if got := stored.avg(); math.IsNaN(got) || math.IsInf(got, 0) || got < lo || got > hi {
			t.Fatalf("stored and read back: mean %v, not finite in [%v, %v]", got, lo, hi)
		}
	})
}

// checkBuckets fails unless every number of bs is finite and each
// bucket's avg of metric is within its min and max; it returns the
// buckets' count of metric.
func checkBuckets(t *testing.T, what string, bs []Bucket, metric string) int64 {
	t.Helper()
	var n int64
	for _, b := range bs {
		for _, m := range []map[string]float64{b.Min, b.Avg, b.Max} {
			for k, v := range m {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("%s: bucket %s: %s is %v", what, b.TS, k, v)
				}
			}
		}
		if avg := b.Avg[metric]; avg < b.Min[metric] || avg > b.Max[metric] {
			t.Fatalf("%s: bucket %s: avg %v outside [%v, %v]", what, b.TS, avg, b.Min[metric], b.Max[metric])
		}
		n += b.Count[metric]
	}
	return n
}

// TestTelemetryRollupsHuge: numbers near the largest float64 give finite
// buckets at every level (raw points, minute chunks, hourly rows), and
// the right mean wherever a sum beyond a float64 is not stored: 1.7e308
// twice averages 1.7e308 with any step (the hourly upsert adds two
// batches' sums without failing on PostgreSQL's overflow or SQLite's NOT
// NULL); +1.7e308 and -1.7e308 never make NaN; and a sum of many such
// numbers is right across minutes and hours merged by a query.
func TestTelemetryRollupsHuge(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "evil", "mixed", "big")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	now := time.Now()
	add := func(device string, ts time.Time, v float64) {
		t.Helper()
		s := mustSample(t, `{"v":`+strconv.FormatFloat(v, 'g', -1, 64)+`}`)
		s.TS = ts
		if !tel.Add(device, s, now) {
			t.Fatal("Add refused")
		}
	}
	flush := func() {
		t.Helper()
		if err := tel.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	buckets := func(device string, from, to time.Time, step time.Duration) []Bucket {
		t.Helper()
		bs, err := tel.Buckets(ctx, device, from, to, step)
		if err != nil {
			t.Fatalf("%s, step %s: %v", device, step, err)
		}
		return bs
	}

	// The tester's case: two publishes, two batches.
	evil := now.Add(-30 * time.Second)
	for range 2 {
		add("evil", evil, 1.7e308)
		flush()
	}
	for _, step := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour, 90 * time.Second} {
		bs := buckets("evil", now.Add(-time.Hour), now, step)
		if n := checkBuckets(t, "evil", bs, "v"); n != 2 || len(bs) != 1 || bs[0].Avg["v"] != 1.7e308 {
			t.Fatalf("step %s: %+v, want one bucket of 2 with avg 1.7e308", step, bs)
		}
	}

	// Both signs, in batches whose own sums go beyond a float64 both
	// ways, in one minute: no NaN anywhere, and the raw points' mean
	// exact.
	mixed := now.Add(-2 * time.Minute).Truncate(time.Minute)
	var mixedVals []float64
	for i, batch := range [][]float64{{1.7e308, 1.7e308}, {-1.7e308, -1.7e308, -1.7e308}, {1.7e308}, {-1e308, 1.7e308, 1.7e308}} {
		for j, v := range batch {
			add("mixed", mixed.Add(time.Duration(10*i+j)*time.Second), v)
			mixedVals = append(mixedVals, v)
		}
		flush()
	}
	for _, step := range []time.Duration{time.Minute, 30 * time.Second, time.Hour} {
		bs := buckets("mixed", mixed, mixed.Add(time.Minute-time.Millisecond), step)
		if n := checkBuckets(t, "mixed", bs, "v"); n != int64(len(mixedVals)) {
			t.Fatalf("step %s: %d numbers in the buckets, want %d", step, n, len(mixedVals))
		}
		if step == time.Minute {
			checkMean(t, "mixed, raw points by the minute", bs[0].Avg["v"], mixedVals, 1e-15)
		}
	}

	// Many numbers near the top, one a minute for three hours two days
	// ago, written ten a batch (each batch's sum beyond a float64): then
	// pruned into minute chunks.
	base := now.Add(-48 * time.Hour).Truncate(time.Hour)
	var bigVals []float64
	for i := range 180 {
		v := math.MaxFloat64 * (0.5 + float64(i%97)/200)
		add("big", base.Add(time.Duration(i)*time.Minute), v)
		bigVals = append(bigVals, v)
		if i%10 == 9 {
			flush()
		}
	}
	// The mean of each span of the three hours, from the exact numbers.
	spans := func(step time.Duration) map[int64][]float64 {
		out := map[int64][]float64{}
		for i, v := range bigVals {
			b := base.Add(time.Duration(i) * time.Minute).UnixMilli()
			b = floorDiv(b, step.Milliseconds()) * step.Milliseconds()
			out[b] = append(out[b], v)
		}
		return out
	}
	exact := func(what string, step time.Duration) {
		t.Helper()
		bs := buckets("big", base, base.Add(3*time.Hour), step)
		if n := checkBuckets(t, what, bs, "v"); n != 180 {
			t.Fatalf("%s, step %s: %d numbers, want 180", what, step, n)
		}
		want := spans(step)
		for _, b := range bs {
			checkMean(t, fmt.Sprintf("%s, step %s, bucket %s", what, step, b.TS), b.Avg["v"], want[b.TS.UnixMilli()], 1e-14)
		}
	}
	exact("raw points", 30*time.Minute)
	exact("raw points", 3*time.Hour+time.Millisecond)
	// The hourly rows' sums reached MaxFloat64: finite, within range.
	for _, step := range []time.Duration{time.Hour, 3 * time.Hour} {
		if n := checkBuckets(t, "hourly rows", buckets("big", base, base.Add(3*time.Hour), step), "v"); n != 180 {
			t.Fatalf("hourly rows, step %s: %d numbers, want 180", step, n)
		}
	}
	if n, err := tel.PruneBefore(ctx, now.Add(-24*time.Hour)); err != nil || n != 180 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	// Minute chunks (each minute's sum is one number), merged across
	// minutes and hours by the query.
	exact("minute chunks", time.Minute)
	exact("minute chunks", 30*time.Minute)
	exact("minute chunks", 90*time.Minute)
	exact("minute chunks", 180*time.Minute+time.Minute)
}

// TestTelemetryRollupsStoredOverflow: the sums an older release stored
// for an overflow (+Inf and -Inf; NaN on PostgreSQL, where +Inf met -Inf;
// SQLite refused that batch) read back finite, and a batch merged into
// such an hourly row is written; an hourly sum one step from the top of
// a float64 takes a number that would round the sum past it, without
// PostgreSQL failing the batch; and the smallest float64, which
// PostgreSQL's multiplication would call an underflow, adds up.
func TestTelemetryRollupsStoredOverflow(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "old")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	now := time.Now()
	hour := now.Add(-72 * time.Hour).Truncate(time.Hour)
	type row struct {
		metric      string
		lo, hi, sum float64
		n           int64
		want        float64 // the mean, or NaN for "in [lo, hi]"
	}
	rows := []row{
		{"pos", 1.7e308, 1.7e308, math.Inf(1), 2, 1.7e308},
		{"neg", -1.7e308, -1.7e308, math.Inf(-1), 2, -1.7e308},
		// One step below the top: the next number's sum would round
		// past it.
		{"top", -1, math.MaxFloat64, math.MaxFloat64 - 0x1p971, 2, math.NaN()},
		// Where the sum rounds to a float64 just below the top.
		{"edge", -1, math.MaxFloat64, math.MaxFloat64 - 3*0x1p971, 2, math.NaN()},
	}
	if testPG != nil {
		rows = append(rows, row{"nan", -1.7e308, 1.7e308, math.NaN(), 4, 0})
	}
	for _, r := range rows {
		if _, err := db.W.ExecContext(ctx, `INSERT INTO telemetry_1h(device_id, metric, ts, min, max, sum, n) VALUES (?,?,?,?,?,?,?)`,
			"old", r.metric, hour.UnixMilli(), r.lo, r.hi, r.sum, r.n); err != nil {
			t.Fatal(err)
		}
	}
	// A minute chunk as an older release wrote one: the sum +Inf.
	d := &chunkData{ts: []int64{hour.Add(-time.Hour).UnixMilli()}}
	for k, v := range []float64{1.7e308, 1.7e308, math.Inf(1), 2} {
		d.cols = append(d.cols, chunkCol{name: string(rune(1+k)) + "pos", syms: []uint32{symNumber}, nums: []float64{v}})
	}
	if _, err := db.W.ExecContext(ctx, `INSERT INTO telemetry_1m(device_id, ts_min, ts_max, n, data) VALUES (?,?,?,?,?)`,
		"old", d.ts[0], d.ts[0], 1, encodeChunk(nil, d)); err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		for _, step := range []time.Duration{time.Hour, time.Minute, 2 * time.Hour} {
			bs, err := tel.Buckets(ctx, "old", hour.Add(-time.Hour), hour.Add(time.Hour-time.Millisecond), step)
			if err != nil {
				t.Fatalf("%s, step %s: %v", what, step, err)
			}
			for _, r := range rows {
				checkBuckets(t, what, bs, r.metric)
			}
			if step == time.Minute {
				if len(bs) == 0 || bs[0].Avg["pos"] != 1.7e308 {
					t.Fatalf("%s: the older minute chunk: %+v", what, bs)
				}
				continue
			}
			last := bs[len(bs)-1]
			for _, r := range rows {
				if got := last.Avg[r.metric]; !math.IsNaN(r.want) && got != r.want {
					t.Fatalf("%s, step %s: %s avg %v, want %v", what, step, r.metric, got, r.want)
				}
			}
		}
	}
	check("as stored")

	// More of the same hour, in two batches: each merges into the
	// stored row, which the writer must not fail on.
	third := strconv.FormatFloat(3*0x1p970, 'g', -1, 64)
	for _, p := range []string{
		`{"pos":1.7e308,"neg":-1.7e308,"top":` + third + `,"edge":` + third + `,"nan":1.7e308,"tiny":5e-324}`,
		`{"pos":1.7e308,"neg":-1.7e308,"top":1,"edge":-1,"nan":-1.7e308,"tiny":5e-324}`,
	} {
		s := mustSample(t, p)
		s.TS = hour.Add(time.Minute)
		tel.Add("old", s, now)
		if err := tel.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	rows[len(rows)-1].want = math.NaN() // nan: merged, some mean in range
	rows = append(rows, row{"tiny", 5e-324, 5e-324, 1e-323, 2, 5e-324})
	check("merged")
	var sum float64
	if err := db.R.QueryRowContext(ctx, `SELECT sum FROM telemetry_1h WHERE metric = 'tiny'`).Scan(&sum); err != nil || sum != 1e-323 {
		t.Fatalf("tiny: sum %v, %v", sum, err)
	}
	for m, want := range map[string]float64{"pos": math.MaxFloat64, "top": math.MaxFloat64, "edge": math.MaxFloat64 - 0x1p971 - 1} {
		if err := db.R.QueryRowContext(ctx, `SELECT sum FROM telemetry_1h WHERE metric = ?`, m).Scan(&sum); err != nil || sum != want {
			t.Fatalf("%s: sum %v, %v; want %v", m, sum, err, want)
		}
	}
}

// TestTelemetryPruneHours: past the rollup retention the hourly rollups of
// every device go (found by device, without an index on ts), a few rows
// per statement, and the later hours of each stay.
func TestTelemetryPruneHours(t *testing.T) {
	ctx := context.Background()
	ids := []string{"0", "a", "b-1", "z"}
	db := openTestDB(t, ids...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour, PruneChunk: 2})
	now := time.Now()
	base := now.Add(-48 * time.Hour).Truncate(time.Hour)
	for _, id := range ids {
		for h := range 6 {
			s := mustSample(t, fmt.Sprintf(`{"v":%d,"w":1,"x":2}`, h))
			s.TS = base.Add(time.Duration(h)*time.Hour + time.Minute)
			if !tel.Add(id, s, now) {
				t.Fatal("Add refused")
			}
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tel.PruneBefore(ctx, now); err != nil {
		t.Fatal(err)
	}
	if err := tel.PruneRollupsBefore(ctx, base.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		bs, err := tel.Buckets(ctx, id, base, base.Add(6*time.Hour), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var hours []int
		for _, b := range bs {
			if b.Count["v"] != 1 || b.Count["w"] != 1 || b.Count["x"] != 1 {
				t.Errorf("device %q hour %s: counts %v", id, b.TS, b.Count)
			}
			hours = append(hours, int(b.Min["v"]))
		}
		if !slices.Equal(hours, []int{3, 4, 5}) {
			t.Errorf("device %q: hours %v after the rollup retention, want [3 4 5]", id, hours)
		}
	}
	var n int
	if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_1h`).Scan(&n); err != nil || n != len(ids)*3*3 {
		t.Errorf("%d hourly rows (%v), want %d", n, err, len(ids)*3*3)
	}
}

// TestTelemetryHourIndexMigration: a database of the release before
// (telemetry step 5; PostgreSQL step 1) keeps its hourly rollups through
// the step that drops their index on ts, and they still answer and prune.
func TestTelemetryHourIndexMigration(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	if err := db.Migrate(ctx, "telemetry", Schema{SQLite: telemetrySchema[:5], Postgres: telemetrySchemaPostgres[:1]}); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-48 * time.Hour).Truncate(time.Hour)
	for _, d := range []string{"d1", "d2"} {
		for h := range 4 {
			if _, err := db.W.Exec(`INSERT INTO telemetry_1h(device_id, metric, ts, min, max, sum, n) VALUES (?, 'v', ?, ?, ?, ?, 2)`,
				d, base.Add(time.Duration(h)*time.Hour).UnixMilli(), h, h+1, 2*h+1); err != nil {
				t.Fatal(err)
			}
		}
	}
	indexes := `SELECT count(*) FROM sqlite_master WHERE name = 'telemetry_1h_ts'`
	if db.Dialect == database.Postgres {
		indexes = `SELECT count(*) FROM pg_indexes WHERE indexname = 'telemetry_1h_ts'`
	}
	var n int
	if err := db.R.QueryRow(indexes).Scan(&n); err != nil || n != 1 {
		t.Fatalf("before: %d indexes telemetry_1h_ts (%v)", n, err)
	}
	tel := openTestTelemetry(t, db, nil)
	if err := db.R.QueryRow(indexes).Scan(&n); err != nil || n != 0 {
		t.Fatalf("after: %d indexes telemetry_1h_ts (%v)", n, err)
	}
	hours := func(d string) (hs []int) {
		t.Helper()
		bs, err := tel.Buckets(ctx, d, base, base.Add(4*time.Hour), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			if b.Count["v"] != 2 || b.Max["v"] != b.Min["v"]+1 || b.Avg["v"] != b.Min["v"]+0.5 {
				t.Errorf("%s hour %s: %v %v %v %v", d, b.TS, b.Min, b.Avg, b.Max, b.Count)
			}
			hs = append(hs, int(b.Min["v"]))
		}
		return hs
	}
	if h := hours("d2"); !slices.Equal(h, []int{0, 1, 2, 3}) {
		t.Fatalf("d2: hours %v after the migration", h)
	}
	if err := tel.PruneRollupsBefore(ctx, base.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"d1", "d2"} {
		if h := hours(d); !slices.Equal(h, []int{2, 3}) {
			t.Errorf("%s: hours %v after pruning, want [2 3]", d, h)
		}
	}
}

// TestTelemetryPrunerHours: the background pruner removes the hourly
// rollups past the rollup retention by itself (its first round prunes
// them; later rounds when a new hour expires), and keeps the others.
// The rollups are written by a store whose pruner does not run, then
// the store is opened again with one that does: a first round that ran
// before they were committed would leave them for the next hour (it
// did, once, on a loaded machine).
func TestTelemetryPrunerHours(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	opts := TelemetryOptions{FlushInterval: time.Hour, Retention: 365 * 24 * time.Hour,
		RollupRetention: 24 * time.Hour, PruneInterval: time.Hour}
	tel := openTestTelemetry(t, db, &opts)
	now := time.Now()
	old, recent := now.Add(-48*time.Hour), now.Add(-time.Hour)
	for _, d := range []string{"d1", "d2"} {
		for _, ts := range []time.Time{old, recent} {
			s := mustSample(t, `{"v":1}`)
			s.TS = ts
			if !tel.Add(d, s, now) {
				t.Fatal("Add refused")
			}
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	tel.Close()
	opts.PruneInterval = 10 * time.Millisecond
	tel = openTestTelemetry(t, db, &opts)
	count := func(from, to time.Time) int64 {
		var n int64
		for _, d := range []string{"d1", "d2"} {
			bs, err := tel.Buckets(ctx, d, from, to, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range bs {
				n += b.Count["v"]
			}
		}
		return n
	}
	var rows int
	waitFor(t, func() bool {
		return db.R.QueryRow(`SELECT count(*) FROM telemetry_1h`).Scan(&rows) == nil && rows == 2
	})
	var ts int64
	if err := db.R.QueryRow(`SELECT min(ts) FROM telemetry_1h`).Scan(&ts); err != nil || ts < now.Add(-2*time.Hour).UnixMilli() {
		t.Fatalf("oldest hour left %v (%v), want the recent one", time.UnixMilli(ts), err)
	}
	if n := count(recent.Add(-time.Minute), now); n != 2 {
		t.Errorf("recent hour: %d points, want 2", n)
	}
}
