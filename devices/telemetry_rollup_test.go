package devices

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"
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
