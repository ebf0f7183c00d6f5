package devices

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"
)

// writeLegacyHistory writes rows × 512 points per device as the previous
// release stored them (JSON-text chunks of [ts, {metrics}]), and returns
// each device's points as a query returned them then.
func writeLegacyHistory(t testing.TB, db *DB, devs []string, rows int, base time.Time) map[string][]Point {
	t.Helper()
	ctx := context.Background()
	if err := db.Migrate(ctx, "telemetry", Schema{SQLite: telemetrySchema[:3]}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string][]Point{}
	tx, err := db.W.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, d := range devs {
		temp := 21.5
		ts := base.UnixMilli()
		for range rows {
			var text []byte
			text = append(text, '[')
			tsMin, tsMax := ts, ts
			for i := range 512 {
				ts += 1000 + rng.Int64N(100)
				pt := ts
				if i%97 == 5 {
					pt -= 5000 // out of order within the chunk
				}
				tsMin, tsMax = min(tsMin, pt), max(tsMax, pt)
				temp += float64(rng.IntN(7)-3) / 10
				vals := fmt.Sprintf(`{"temp":%s,"hum":%d,"on":%t,"fw":"1.%d","caf\u00e9":%g}`,
					strconv.FormatFloat(temp, 'f', -1, 64), 40+rng.IntN(3), i%50 < 25, i/200, rng.Float64())
				if i%10 == 3 {
					vals = `{"temp":-0.0,"note":"a \"quoted\" text"}`
				}
				if i > 0 {
					text = append(text, ',')
				}
				text = fmt.Appendf(text, "[%d,%s]", pt, vals)
				p := Point{TS: time.UnixMilli(pt).UTC()}
				if err := json.Unmarshal([]byte(vals), &p.Values); err != nil {
					t.Fatal(err)
				}
				want[d] = append(want[d], p)
			}
			text = append(text, ']')
			if _, err := tx.Exec(`INSERT INTO telemetry(device_id, ts_min, ts_max, n, points) VALUES (?,?,?,?,?)`,
				d, tsMin, tsMax, 512, string(text)); err != nil {
				t.Fatal(err)
			}
		}
		slices.SortStableFunc(want[d], func(a, b Point) int { return cmp.Compare(a.TS.UnixMilli(), b.TS.UnixMilli()) })
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestTelemetryMigration: the previous release's history is all there
// after the start-up that converts it, also when that start-up was cut
// short after one transaction and the next start finished it; and
// deleting a device afterwards still deletes its history.
func TestTelemetryMigration(t *testing.T) {
	sqliteOnly(t, "SQLite's legacy history")
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Hour)
	want := writeLegacyHistory(t, db, []string{"d1", "d2"}, 3, base) // 6 rows: 1 transaction of 256 would take all
	legacyRows := func() int {
		var n int
		if err := db.R.QueryRow(`SELECT count(*) FROM telemetry`).Scan(&n); err != nil {
			return -1
		}
		return n
	}

	// Stopped after one transaction of migrateRows (made small here).
	defer func(n int) { migrateRowsTest = n }(migrateRowsTest)
	migrateRowsTest = 2
	if _, err := OpenTelemetry(ctx, db, &TelemetryOptions{migrateStop: 1}); !errors.Is(err, errMigrationStopped) {
		t.Fatalf("open with the stop hook: %v", err)
	}
	if n := legacyRows(); n != 4 {
		t.Fatalf("%d old rows left after one transaction, want 4", n)
	}

	tel := openTestTelemetry(t, db, nil)
	if n := legacyRows(); n != -1 {
		t.Fatalf("old table still there with %d rows", n)
	}
	for d, w := range want {
		got, err := tel.Points(ctx, d, base.Add(-time.Hour), time.Now(), MaxTelemetryPoints)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(w) {
			t.Fatalf("%s: %d points, want %d", d, len(got), len(w))
		}
		for i := range w {
			if !got[i].TS.Equal(w[i].TS) || !reflect.DeepEqual(got[i].Values, w[i].Values) {
				t.Fatalf("%s point %d: %v %v, want %v %v", d, i, got[i].TS, got[i].Values, w[i].TS, w[i].Values)
			}
		}
		// The hourly rollups have every number.
		bs, err := tel.Buckets(ctx, d, base.Add(-time.Hour), time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, b := range bs {
			n += b.Count["temp"]
		}
		if n != int64(len(w)) {
			t.Errorf("%s: hourly rollups count %d temps, want %d", d, n, len(w))
		}
	}

	reg := testRegistry(t, db)
	reg.Attach(tel)
	if err := reg.DeleteDevice(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if got, err := tel.Points(ctx, "d1", base.Add(-time.Hour), time.Now(), 10); err != nil || len(got) != 0 {
		t.Fatalf("deleted device: %d points, %v", len(got), err)
	}
}

// BenchmarkTelemetryMigrate measures the start-up migration of the
// previous release's history: 20 devices × 50 JSON-text chunks of 512
// points.
//
//	go test -run XXX -bench TelemetryMigrate -benchtime 1x ./devices/
func BenchmarkTelemetryMigrate(b *testing.B) {
	for range b.N {
		b.StopTimer()
		db, err := OpenDB(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := db.W.Exec(`CREATE TABLE devices (id TEXT PRIMARY KEY, last_seen TEXT, last_values TEXT NOT NULL DEFAULT '{}')`); err != nil {
			b.Fatal(err)
		}
		devs := make([]string, 20)
		for i := range devs {
			devs[i] = fmt.Sprintf("dev-%02d", i)
		}
		writeLegacyHistory(b, db, devs, 50, time.Now().Add(-72*time.Hour))
		b.StartTimer()
		start := time.Now()
		tel, err := OpenTelemetry(context.Background(), db, nil)
		if err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		b.ReportMetric(float64(len(devs)*50*512)/el.Seconds(), "points/s")
		tel.Close()
		db.Close()
	}
}
