package devices

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testlog"
)

// fillRollups stores, for each device, samples of metrics metrics every
// step over hours hours ending at end (a backfill: timestamps in the
// past), and folds the points older than keep before end into the minute
// rollups (PruneBefore): hourly rows for every hour, minute chunks for
// all but the last keep, and raw history for those.
func fillRollups(t *testing.T, tel *Telemetry, devs []string, metrics, hours int, step time.Duration, end time.Time, keep time.Duration) {
	t.Helper()
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(3, 4))
	start := end.Add(-time.Duration(hours) * time.Hour).Truncate(time.Hour)
	for ts := start; ts.Before(end); ts = ts.Add(step) {
		for _, d := range devs {
			var b strings.Builder
			fmt.Fprintf(&b, `{"ts":%d`, ts.UnixMilli())
			for m := range metrics {
				fmt.Fprintf(&b, `,"metric.%d":%.2f`, m, rnd.Float64()*100)
			}
			b.WriteString("}")
			if !tel.Add(d, mustSample(t, b.String()), time.Now()) {
				t.Fatal("Add refused")
			}
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tel.PruneBefore(ctx, end.Add(-keep)); err != nil {
		t.Fatal(err)
	}
}

// waitRollupStats waits, on PostgreSQL, until the statistics count every
// rollup row (rollupSize reads n_live_tup, as historySize: waitStats).
func waitRollupStats(t *testing.T, db *DB) {
	t.Helper()
	if db.Dialect != database.Postgres {
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok bool
		if err := db.R.QueryRow(`SELECT
			COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_1m'), 0) = (SELECT count(*) FROM telemetry_1m) AND
			COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_1h'), 0) = (SELECT count(*) FROM telemetry_1h)`).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var a, b, c, d int64
			db.R.QueryRow(`SELECT
				COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_1m'), 0), (SELECT count(*) FROM telemetry_1m),
				COALESCE((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_1h'), 0), (SELECT count(*) FROM telemetry_1h)`).Scan(&a, &b, &c, &d)
			t.Fatalf("statistics count %d of %d minute rows, %d of %d hourly rows after 60 s", a, b, c, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rollupRows are a table's rows as SQL counts them, and as
// telemetry_rollup_sizes (SQLite) says.
func checkRollupCounts(t *testing.T, db *DB) {
	t.Helper()
	if db.Dialect == database.Postgres {
		return
	}
	for _, c := range []struct{ table, bytes string }{
		{"telemetry_1m", "length(data) + 2*length(device_id)"},
		{"telemetry_1h", "length(device_id) + length(metric)"},
	} {
		var rows, bytes, keptRows, keptBytes int64
		if err := db.R.QueryRow(`SELECT count(*), COALESCE(sum(`+c.bytes+`), 0) FROM `+c.table).Scan(&rows, &bytes); err != nil {
			t.Fatal(err)
		}
		if err := db.R.QueryRow(`SELECT rows, bytes FROM telemetry_rollup_sizes WHERE tbl = ?`, c.table).Scan(&keptRows, &keptBytes); err != nil {
			t.Fatal(err)
		}
		if rows != keptRows || bytes != keptBytes {
			t.Errorf("%s: %d rows of %d bytes, telemetry_rollup_sizes says %d of %d", c.table, rows, bytes, keptRows, keptBytes)
		}
	}
}

// realRollupBytes is what the rollups take on disk: SQLite's dbstat pages
// of their tables and indexes, or PostgreSQL's pg_total_relation_size.
func realRollupBytes(t *testing.T, db *DB) (minutes, hours int64) {
	t.Helper()
	q := `SELECT
		(SELECT sum(pgsize) FROM dbstat WHERE name IN ('telemetry_1m', 'telemetry_1m_device_ts', 'telemetry_1m_ts')),
		(SELECT sum(pgsize) FROM dbstat WHERE name = 'telemetry_1h')`
	if db.Dialect == database.Postgres {
		q = `SELECT pg_total_relation_size('telemetry_1m'), pg_total_relation_size('telemetry_1h')`
	}
	if err := db.R.QueryRow(q).Scan(&minutes, &hours); err != nil {
		t.Fatal(err)
	}
	return minutes, hours
}

// TestTelemetryRollupSizeEstimate: rollupSize is near what the rollups
// take on disk (dbstat's pages on SQLite; on PostgreSQL the tables' files
// once VACUUM FULL has left out the versions the hourly upserts left
// behind), the minute chunks and the hourly rows each, after a backfill.
func TestTelemetryRollupSizeEstimate(t *testing.T) {
	ctx := context.Background()
	devs := []string{"sensor-0001", "sensor-0002", "sensor-0003", "sensor-0004", "sensor-0005", "sensor-0006"}
	db := openTestDB(t, devs...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, Retention: 30 * 24 * time.Hour})
	fillRollups(t, tel, devs, 8, 200, 2*time.Minute, time.Now(), 2*time.Hour)
	checkRollupCounts(t, db)
	waitRollupStats(t, db)
	s, err := tel.rollupSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if db.Dialect == database.Postgres {
		if _, err := db.W.Exec(`VACUUM FULL telemetry_1m, telemetry_1h`); err != nil {
			t.Fatal(err)
		}
	}
	minutes, hours := realRollupBytes(t, db)
	t.Logf("minute rollups: estimated %d bytes, %d on disk (%.3f); hourly: %d rows, estimated %d bytes, %d on disk (%.3f)",
		s.minutes, minutes, float64(s.minutes)/float64(minutes), s.hourRows, s.hours, hours, float64(s.hours)/float64(hours))
	if s.hourRows != int64(len(devs)*8*200) && s.hourRows != int64(len(devs)*8*201) {
		t.Errorf("%d hourly rows, want %d (or one hour more)", s.hourRows, len(devs)*8*200)
	}
	for _, c := range []struct {
		what      string
		est, real int64
	}{{"minute rollups", s.minutes, minutes}, {"hourly rollups", s.hours, hours}} {
		if r := float64(c.est) / float64(c.real); r < 0.85 || r > 1.15 {
			t.Errorf("%s: estimated %d bytes, %d on disk (%.2f of it)", c.what, c.est, c.real, r)
		}
	}
}

// TestTelemetryRollupSizeCounts: on SQLite the rows and bytes the
// triggers keep are those of the tables, through the writer's upserts,
// the pruner's minute chunks, retention and a device's deletion; on both
// backends retention's deletions are counted by rollup.
func TestTelemetryRollupSizeCounts(t *testing.T) {
	ctx := context.Background()
	devs := []string{"d1", "d2", "d3"}
	db := openTestDB(t, devs...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, Retention: 30 * 24 * time.Hour})
	fillRollups(t, tel, devs, 3, 200, 5*time.Minute, time.Now(), 2*time.Hour)
	// A second pass over the same hours: the upserts update rows.
	fillRollups(t, tel, devs, 3, 200, 10*time.Minute, time.Now(), 2*time.Hour)
	checkRollupCounts(t, db)
	var hours0 int64
	if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_1h`).Scan(&hours0); err != nil {
		t.Fatal(err)
	}
	if err := tel.PruneRollupsBefore(ctx, time.Now().Add(-100*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var hours1 int64
	if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_1h`).Scan(&hours1); err != nil {
		t.Fatal(err)
	}
	checkRollupCounts(t, db)
	if n := count(tel.m.minutesPruned[0]); n == 0 {
		t.Error("minute rows pruned by retention not counted")
	}
	if n := count(tel.m.hoursPruned[0]); n != hours0-hours1 || n < int64(len(devs)*3*100) {
		t.Errorf("hourly rows pruned by retention: counted %d, want %d", n, hours0-hours1)
	}
	if err := testRegistry(t, db).DeleteDevice(ctx, devs[0]); err != nil {
		t.Fatal(err)
	}
	checkRollupCounts(t, db)
}

// TestTelemetryRollupSizeMigration: a database of the release before
// (telemetry step 6) with rollups gets their rows and bytes counted by
// the step that adds the triggers.
func TestTelemetryRollupSizeMigration(t *testing.T) {
	sqliteOnly(t, "the counts are SQLite's (PostgreSQL reads its statistics)")
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	if err := db.Migrate(ctx, "telemetry", Schema{SQLite: telemetrySchema[:6]}); err != nil {
		t.Fatal(err)
	}
	for i, d := range []string{"d1", "d2", "d2"} {
		if _, err := db.W.Exec(`INSERT INTO telemetry_1h(device_id, metric, ts, min, max, sum, n) VALUES (?, 'v', ?, 1, 2, 3, 2)`, d, i*3600000); err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.Exec(`INSERT INTO telemetry_1m(device_id, ts_min, ts_max, n, data) VALUES (?, 0, 60000, 1, ?)`, d, make([]byte, 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour})
	checkRollupCounts(t, db)
	var rows int
	if err := db.R.QueryRow(`SELECT rows FROM telemetry_rollup_sizes WHERE tbl = 'telemetry_1h'`).Scan(&rows); err != nil || rows != 3 {
		t.Errorf("hourly rows counted: %d (%v), want 3", rows, err)
	}
}

// minuteChunks returns the minute chunks' ids, oldest first (as the size
// bound removes them).
func minuteChunks(t *testing.T, db *DB) []int64 {
	t.Helper()
	rows, err := db.R.Query(`SELECT id FROM telemetry_1m ORDER BY ts_max, id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// hourRows returns the hourly rows per hour.
func hourRows(t *testing.T, db *DB) map[int64]int {
	t.Helper()
	rows, err := db.R.Query(`SELECT ts, count(*) FROM telemetry_1h GROUP BY ts`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	hs := map[int64]int{}
	for rows.Next() {
		var ts int64
		var n int
		if err := rows.Scan(&ts, &n); err != nil {
			t.Fatal(err)
		}
		hs[ts] = n
	}
	return hs
}

// TestTelemetryPruneRollupsToSize: past RollupRetentionSize the pruner
// removes the oldest minute chunks first; when the minutes are not
// enough, all of them and then whole hours of the hourly rollups, the
// oldest first, until the rollups are under the bound (and not far
// under); it never touches the raw history, nor the hourly rollups of
// the current hour and the one before, counts what it removed by rollup
// and reason, shows the estimate, and logs once a pass.
func TestTelemetryPruneRollupsToSize(t *testing.T) {
	ctx := context.Background()
	devs := []string{"a", "b", "c", "d"}
	db := openTestDB(t, devs...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, Retention: 60 * 24 * time.Hour})
	now := time.Now()
	fillRollups(t, tel, devs, 6, 300, 5*time.Minute, now, 3*time.Hour)
	tel.Close()
	waitRollupStats(t, db)
	s0, err := tel.rollupSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s0.minutes < 50_000 || s0.hours < 50_000 {
		t.Fatalf("rollups of %+v bytes: too small a test", s0)
	}
	var raw0 int64
	if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_chunks`).Scan(&raw0); err != nil || raw0 == 0 {
		t.Fatalf("%d raw history rows (%v): the test keeps some", raw0, err)
	}
	chunks0, hours0 := minuteChunks(t, db), hourRows(t, db)
	hourKeys := slices.Sorted(func(yield func(int64) bool) {
		for h := range hours0 {
			if !yield(h) {
				return
			}
		}
	})

	var logs *testlog.Buffer
	open := func(bound int64) *Telemetry {
		logs = new(testlog.Buffer)
		return openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, Retention: 60 * 24 * time.Hour,
			RollupRetentionSize: bound, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	}
	measure := func(tel *Telemetry) rollupSizes {
		t.Helper()
		waitRollupStats(t, db)
		s, err := tel.rollupSize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	rawKept := func() {
		t.Helper()
		var n int64
		if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_chunks`).Scan(&n); err != nil || n != raw0 {
			t.Errorf("%d raw history rows (%v), want %d: the rollups' bound removes no raw point", n, err, raw0)
		}
	}
	logged := func(want int) {
		t.Helper()
		if c := strings.Count(logs.String(), "rollups larger than telemetry.rollup_retention_size"); c != want {
			t.Errorf("%d log lines about the rollups' size bound, want %d:\n%s", c, want, logs.String())
		}
	}

	// 1. Half the minutes over: the oldest minute chunks go, the hours stay.
	bound := s0.hours + s0.minutes/2
	tel = open(bound)
	if err := tel.PruneRollupsToSize(ctx); err != nil {
		t.Fatal(err)
	}
	s1 := measure(tel)
	chunks1 := minuteChunks(t, db)
	if len(chunks1) == 0 || len(chunks1) == len(chunks0) || !slices.Equal(chunks1, chunks0[len(chunks0)-len(chunks1):]) {
		t.Errorf("minute chunks kept: %d of %d, want the newest ones, some of them", len(chunks1), len(chunks0))
	}
	if s1.minutes+s1.hours > bound || s1.minutes+s1.hours < bound*9/10 {
		t.Errorf("rollups of %d bytes after pruning to %d (from %d)", s1.minutes+s1.hours, bound, s0.minutes+s0.hours)
	}
	if hs := hourRows(t, db); len(hs) != len(hours0) || s1.hourRows != s0.hourRows {
		t.Errorf("hours: %d kept of %d (%d rows of %d): the minutes go first", len(hs), len(hours0), s1.hourRows, s0.hourRows)
	}
	if n := count(tel.m.minutesPruned[1]); n != int64(len(chunks0)-len(chunks1)) || count(tel.m.hoursPruned[1]) != 0 {
		t.Errorf("counted %d minute rows and %d hourly rows pruned to size; %d minute rows went", n, count(tel.m.hoursPruned[1]), len(chunks0)-len(chunks1))
	}
	if g := gaugeValue(tel.m.rollupBytes); g != float64(s0.minutes+s0.hours) {
		t.Errorf("tether_telemetry_rollup_bytes %v, want the estimate %d", g, s0.minutes+s0.hours)
	}
	logged(1)
	rawKept()
	if err := tel.PruneRollupsToSize(ctx); err != nil {
		t.Fatal(err)
	}
	logged(1) // under the bound: nothing more
	tel.Close()

	// 2. Past what the minutes hold: all of them go, then whole hours,
	// the oldest first.
	bound = s1.hours * 2 / 3
	tel = open(bound)
	if err := tel.PruneRollupsToSize(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := measure(tel)
	if n := len(minuteChunks(t, db)); n != 0 {
		t.Errorf("%d minute chunks kept: all go before an hour", n)
	}
	hs := hourRows(t, db)
	gone := len(hourKeys) - len(hs)
	if gone == 0 || len(hs) == 0 {
		t.Fatalf("%d hours removed, %d kept", gone, len(hs))
	}
	for i, h := range hourKeys {
		if kept := hs[h] > 0; kept != (i >= gone) {
			t.Fatalf("hour %d of %d (%s) kept %v: the oldest go first", i, len(hourKeys), time.UnixMilli(h).UTC(), kept)
		}
		if hs[h] > 0 && hs[h] != hours0[h] {
			t.Errorf("hour %s: %d rows kept of %d: whole hours go", time.UnixMilli(h).UTC(), hs[h], hours0[h])
		}
	}
	if size := s2.minutes + s2.hours; size > bound || size < bound*9/10 {
		t.Errorf("rollups of %d bytes after pruning to %d (from %d)", size, bound, s1.minutes+s1.hours)
	}
	if n := count(tel.m.hoursPruned[1]); n != s1.hourRows-s2.hourRows {
		t.Errorf("counted %d hourly rows pruned to size; %d went", n, s1.hourRows-s2.hourRows)
	}
	logged(1)
	if !strings.Contains(logs.String(), "oldest_hour_kept="+time.UnixMilli(hourKeys[gone]).UTC().Format("2006-01-02T15:04:05.000Z")) {
		t.Errorf("log does not name the oldest hour kept (%s):\n%s", time.UnixMilli(hourKeys[gone]).UTC(), logs.String())
	}
	rawKept()
	tel.Close()

	// 3. A bound the last two hours alone pass: they stay, and the log
	// says so.
	tel = open(1)
	if err := tel.PruneRollupsToSize(ctx); err != nil {
		t.Fatal(err)
	}
	hour := time.Hour.Milliseconds()
	guard := floorDiv(time.Now().UnixMilli(), hour)*hour - hour
	for h, n := range hourRows(t, db) {
		if h < guard-hour { // the pass may have begun an hour earlier
			t.Errorf("hour %s kept (%d rows)", time.UnixMilli(h).UTC(), n)
		}
	}
	for _, h := range []int64{guard, guard + hour} {
		if h <= hourKeys[len(hourKeys)-1] && hourRows(t, db)[h] != hours0[h] {
			t.Errorf("hour %s: %d rows kept of %d: the last two hours stay", time.UnixMilli(h).UTC(), hourRows(t, db)[h], hours0[h])
		}
	}
	if !strings.Contains(logs.String(), "which alone pass it") {
		t.Errorf("log does not say the last hours alone pass the bound:\n%s", logs.String())
	}
	rawKept()
}

// TestTelemetryPrunerHoldsRollupSize: after a backfill of old points by
// many devices (through the writer, folded into the minute rollups by
// retention), the background pruner brings the rollups under
// RollupRetentionSize by itself, keeps the newest hours, and shows the
// estimate.
func TestTelemetryPrunerHoldsRollupSize(t *testing.T) {
	ctx := context.Background()
	var devs []string
	for i := range 12 {
		devs = append(devs, fmt.Sprintf("dev-%02d", i))
	}
	db := openTestDB(t, devs...)
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: time.Hour, Retention: 24 * time.Hour})
	now := time.Now()
	fillRollups(t, tel, devs, 4, 24*20, 15*time.Minute, now, 24*time.Hour)
	tel.Close()
	waitRollupStats(t, db)
	s0, err := tel.rollupSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newest := slices.Max(slices.Collect(func(yield func(int64) bool) {
		for h := range hourRows(t, db) {
			if !yield(h) {
				return
			}
		}
	}))
	bound := (s0.minutes + s0.hours) / 3
	tel = openTestTelemetry(t, db, &TelemetryOptions{PruneInterval: 50 * time.Millisecond, Retention: 24 * time.Hour,
		RollupRetentionSize: bound, Logger: slog.New(slog.DiscardHandler)})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		g := gaugeValue(tel.m.rollupBytes)
		if g > 0 && g <= float64(bound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollups estimated at %v bytes after 2 minutes, bound %d (from %d)", g, bound, s0.minutes+s0.hours)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if count(tel.m.minutesPruned[1]) == 0 || count(tel.m.hoursPruned[1]) == 0 {
		t.Errorf("pruned to size: %d minute rows, %d hourly rows; want both", count(tel.m.minutesPruned[1]), count(tel.m.hoursPruned[1]))
	}
	if hs := hourRows(t, db); hs[newest] != len(devs)*4 {
		t.Errorf("newest hour: %d rows kept of %d", hs[newest], len(devs)*4)
	}
}

// gaugeValue is a gauge's value.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// TestTelemetryPruneRollupsToSizeDenseBackfill: when the oldest hours
// hold many more rows than the average (a backfill of many metrics long
// ago, then a few metrics since), the size bound removes about what it
// must of them, not hours reckoned at the average density (which would
// take the backfill and many hours after it).
func TestTelemetryPruneRollupsToSizeDenseBackfill(t *testing.T) {
	ctx := context.Background()
	devs := []string{"a", "b", "c", "d"}
	db := openTestDB(t, devs...)
	opts := TelemetryOptions{PruneInterval: time.Hour, Retention: 60 * 24 * time.Hour}
	tel := openTestTelemetry(t, db, &opts)
	now := time.Now()
	fillRollups(t, tel, devs, 40, 24, 15*time.Minute, now.Add(-400*time.Hour), 0)
	fillRollups(t, tel, devs, 2, 400, time.Hour, now, 0)
	tel.Close()
	waitRollupStats(t, db)
	s0, err := tel.rollupSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dense := float64(s0.hours) / float64(s0.hourRows) * float64(len(devs)*40*24)
	opts.RollupRetentionSize = s0.hours - int64(dense/2)
	tel = openTestTelemetry(t, db, &opts)
	if err := tel.PruneRollupsToSize(ctx); err != nil {
		t.Fatal(err)
	}
	waitRollupStats(t, db)
	s1, err := tel.rollupSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bound := opts.RollupRetentionSize
	if size := s1.minutes + s1.hours; size > bound || size < bound*9/10 {
		t.Errorf("rollups of %d bytes after pruning to %d (from %d; the backfill's hours hold %.0f)", size, bound, s0.minutes+s0.hours, dense)
	}
}
