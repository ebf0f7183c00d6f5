package devices

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testlog"
)

// TestTelemetryDeviceValuesRate: a device's stored values are bounded by
// DeviceValuesRate in bursts of DeviceValuesBurst; a sample that would
// pass it is not stored (whole), counted and logged once a minute per
// device with how many were not stored, and shown (NotStored) with when
// the last was; another device has its own bound; the bound refills with
// time.
func TestTelemetryDeviceValuesRate(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "flood", "calm")
	var logs testlog.Buffer
	tel := openTestTelemetry(t, db, &TelemetryOptions{DeviceValuesRate: 100, DeviceValuesBurst: 300,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	full, small := namesSample(t, "m", 256, 0), namesSample(t, "m", 40, 0)
	t0 := time.Now().Truncate(time.Second)
	for i, c := range []struct {
		device string
		s      Sample
		at     time.Duration
		stored bool
	}{
		{"flood", full, 0, true},                 // 256 of 300
		{"flood", full, 0, false},                // 512: past the burst
		{"flood", small, 0, true},                // 296
		{"flood", small, 0, false},               // 336
		{"calm", full, 0, true},                  // its own bound
		{"flood", full, 2 * time.Second, false},  // 256 + 96 left: 352
		{"flood", full, 3 * time.Second, true},   // refilled: 256
		{"flood", full, 61 * time.Second, true},  // a minute on
		{"flood", full, 61 * time.Second, false}, // logged again
		{"flood", small, 61 * time.Second, true}, // 296
		{"calm", small, 61 * time.Second, true},
	} {
		if got := tel.Add(c.device, c.s, t0.Add(c.at)); got != c.stored {
			t.Fatalf("sample %d (%s, %d values at +%s): stored %v, want %v", i, c.device, c.s.N, c.at, got, c.stored)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for device, want := range map[string]int{"flood": 5, "calm": 2} {
		ps, err := tel.Points(ctx, device, t0.Add(-time.Minute), t0.Add(2*time.Minute), 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != want {
			t.Errorf("%s: %d points stored, want %d", device, len(ps), want)
		}
	}
	if n := count(tel.m.overRate); n != 4 {
		t.Errorf("points counted over the rate: %d, want 4", n)
	}
	// What the device's owner sees (GET /devices/{id}): 4 samples since
	// the store opened, the last at +61s; none of calm, nor of a device
	// that never reported.
	ns := tel.NotStored("flood")
	if ns.Samples != 4 || ns.LastAt == nil || !ns.LastAt.Equal(t0.Add(61*time.Second)) || ns.Since.IsZero() || ns.Since.After(time.Now()) {
		t.Errorf("flood not stored: %+v, want 4, the last at %s", ns, t0.Add(61*time.Second))
	}
	for _, device := range []string{"calm", "nobody"} {
		if ns := tel.NotStored(device); ns.Samples != 0 || ns.LastAt != nil || ns.Since.IsZero() {
			t.Errorf("%s not stored: %+v, want none", device, ns)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var over []string
	for _, l := range lines {
		if strings.Contains(l, "telemetry.device_values_rate") {
			over = append(over, l)
		}
	}
	if len(over) != 2 || !strings.Contains(over[0], "device=flood") || !strings.Contains(over[0], "points_not_stored=1") ||
		!strings.Contains(over[1], "points_not_stored=3") {
		t.Errorf("log lines over the rate: %q, want two for flood (1, then the 3 since)", over)
	}
	if strings.Contains(logs.String(), `"m1"`) || strings.Contains(logs.String(), "m1=") {
		t.Errorf("log holds a value: %s", logs.String())
	}
}

// TestValueRateClockBack: a clock that went back past what the bucket can
// hold does not refuse the device for as long.
func TestValueRateClockBack(t *testing.T) {
	r := newValueRate(10, 256)
	var tat atomic.Int64
	now := time.Now().UnixNano()
	if !r.allow(&tat, 256, now) || r.allow(&tat, 1, now) {
		t.Fatal("the burst is 256")
	}
	back := now - int64(time.Hour)
	if !r.allow(&tat, 256, back) {
		t.Error("refused after the clock went back an hour")
	}
}

// waitStats waits, on PostgreSQL, until the statistics count every history
// row (historySize reads n_live_tup, which a backend reports within a
// few seconds of its commits).
func waitStats(t *testing.T, db *DB) {
	t.Helper()
	if db.Dialect != database.Postgres {
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var live, rows int64
		if err := db.R.QueryRow(`SELECT COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_chunks'), 0),
			(SELECT count(*) FROM telemetry_chunks)`).Scan(&live, &rows); err != nil {
			t.Fatal(err)
		}
		if live == rows {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("statistics count %d history rows of %d after 60 s", live, rows)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTelemetryPruneToSize: past RetentionSize the pruner removes the
// oldest history rows of all devices until the history is under it,
// folds them into the minute rollups (minute buckets still count every
// point), keeps each device's newest points, counts and logs it once;
// under the bound it removes nothing.
func TestTelemetryPruneToSize(t *testing.T) {
	ctx := context.Background()
	devs := []string{"a", "b", "c"}
	db := openTestDB(t, devs...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour})
	rnd := rand.New(rand.NewPCG(1, 2))
	base := time.Now().Add(-48 * time.Hour).Truncate(time.Minute)
	const n = 3000
	for i := range n {
		for j, d := range devs {
			ts := base.Add(time.Duration(i)*30*time.Second + time.Duration(j)*time.Second)
			s := mustSample(t, fmt.Sprintf(`{"ts":%d,"x":%v,"y":%v}`, ts.UnixMilli(), rnd.Float64()*100, rnd.NormFloat64()))
			if !tel.Add(d, s, time.Now()) {
				t.Fatal("dropped")
			}
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	tel.Close()
	waitStats(t, db)
	all := func(tel *Telemetry, d string) []Point {
		ps, err := tel.Points(ctx, d, base.Add(-time.Hour), time.Now(), 10000)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	before := map[string][]Point{}
	for _, d := range devs {
		before[d] = all(tel, d)
		if len(before[d]) != n {
			t.Fatalf("%s: %d points stored, want %d", d, len(before[d]), n)
		}
	}
	size0, err := tel.historySize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if size0 < 100_000 {
		t.Fatalf("history of %d bytes: too small a test", size0)
	}

	var logs testlog.Buffer
	bound := size0 / 2
	tel = openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, RetentionSize: bound,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	pruned, err := tel.PruneToSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitStats(t, db)
	size1, err := tel.historySize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if size1 > bound || size1 < bound/2 {
		t.Errorf("history of %d bytes after pruning to %d (from %d)", size1, bound, size0)
	}
	var oldestKept int64
	if err := db.R.QueryRow(`SELECT min(ts_max) FROM telemetry_chunks`).Scan(&oldestKept); err != nil {
		t.Fatal(err)
	}
	var removed int64
	for _, d := range devs {
		after := all(tel, d)
		gone := len(before[d]) - len(after)
		removed += int64(gone)
		if gone == 0 || len(after) == 0 {
			t.Errorf("%s: %d points removed, %d kept: the oldest of every device go, the newest stay", d, gone, len(after))
			continue
		}
		for i, p := range after {
			if !p.TS.Equal(before[d][gone+i].TS) {
				t.Fatalf("%s: point %d kept is %s, want %s (the newest kept, in order)", d, i, p.TS, before[d][gone+i].TS)
			}
		}
		if last := before[d][gone-1].TS.UnixMilli(); last > oldestKept {
			t.Errorf("%s: removed a point of %d, newer than a row kept (latest point %d): not the oldest first", d, last, oldestKept)
		}
		bs, err := tel.Buckets(ctx, d, base.Add(-time.Hour), time.Now(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var counted int64
		for _, b := range bs {
			counted += b.Count["x"]
		}
		if counted != n {
			t.Errorf("%s: minute buckets count %d points, want %d (the removed ones folded into the minute rollups)", d, counted, n)
		}
	}
	if pruned != removed || count(tel.m.prunedSize) != removed {
		t.Errorf("PruneToSize said %d points, counted %d; %d went", pruned, count(tel.m.prunedSize), removed)
	}
	if c := strings.Count(logs.String(), "history larger than telemetry.retention_size"); c != 1 || !strings.Contains(logs.String(), fmt.Sprintf("points=%d", removed)) {
		t.Errorf("log: %d lines about the size bound, want one with points=%d:\n%s", c, removed, logs.String())
	}
	if again, err := tel.PruneToSize(ctx); err != nil || again != 0 {
		t.Errorf("under the bound: pruned %d, %v", again, err)
	}
}

// BenchmarkValueRate is the per-device value check alone, as Add makes it
// for each sample (4 values, far under the bound):
//
//	go test -run XXX -bench ValueRate ./devices/
func BenchmarkValueRate(b *testing.B) {
	r := newValueRate(1000, 10000)
	var tat atomic.Int64
	now := time.Now().UnixNano()
	for i := range b.N {
		if !r.allow(&tat, 4, now+int64(i)*int64(time.Second)) {
			b.Fatal("refused")
		}
	}
}
