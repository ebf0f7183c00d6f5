package devices

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkTelemetryQuery measures chart queries, as the device page makes
// them, over a store in its steady state: one device that reported every
// second for 30 days (2.6 million points, two metrics) and a fleet of 50
// that reported every 5 minutes, with the default 7-day raw retention
// applied (older points pruned into the minute rollups). It reports each
// query's p50 and p99 over 200 runs. "fleet" is the 50 devices' buckets
// fetched one device after the other, as an API client would.
//
//	go test -run XXX -bench TelemetryQuery -benchtime 1x -timeout 30m ./devices/
func BenchmarkTelemetryQuery(b *testing.B) {
	ctx := context.Background()
	db, err := OpenDB(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.W.Exec(`CREATE TABLE devices (id TEXT PRIMARY KEY, last_seen TEXT, last_values TEXT NOT NULL DEFAULT '{}')`); err != nil {
		b.Fatal(err)
	}
	fleet := make([]string, 50)
	for i := range fleet {
		fleet[i] = fmt.Sprintf("fleet-%02d", i)
	}
	for _, id := range append([]string{"busy"}, fleet...) {
		if _, err := db.W.Exec(`INSERT INTO devices(id) VALUES (?)`, id); err != nil {
			b.Fatal(err)
		}
	}
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{PruneInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Close()
	now := time.Now().Truncate(time.Second)
	start := now.Add(-30 * 24 * time.Hour)
	add := func(id string, ts time.Time, i int) {
		s, err := ParseTelemetry(fmt.Appendf(nil, `{"temp":%d.%d,"hum":%d}`, 20+i%7, i%10, 40+i%3))
		if err != nil {
			b.Fatal(err)
		}
		s.TS = ts
		for !tel.Add(id, s, now) {
			time.Sleep(time.Millisecond)
		}
	}
	t0 := time.Now()
	n := 0
	for ts := start; ts.Before(now); ts = ts.Add(time.Second) {
		add("busy", ts, n)
		if n%300 == 0 {
			for _, id := range fleet {
				add(id, ts, n/300)
			}
		}
		n++
	}
	if err := tel.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("ingested %d points in %s", n+n/300*len(fleet), time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	pruned, err := tel.PruneBefore(ctx, now.Add(-7*24*time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("pruned %d points into minute rollups in %s", pruned, time.Since(t0).Round(time.Millisecond))

	ranges := []struct {
		name string
		span time.Duration
		step time.Duration
	}{{"1h", time.Hour, time.Minute}, {"24h", 24 * time.Hour, 5 * time.Minute}, {"7d", 7 * 24 * time.Hour, time.Hour}, {"30d", 30 * 24 * time.Hour, time.Hour}}
	for _, r := range ranges {
		for _, who := range []string{"device", "fleet"} {
			b.Run(who+"/"+r.name, func(b *testing.B) {
				ids := []string{"busy"}
				if who == "fleet" {
					ids = fleet
				}
				var took []time.Duration
				for range max(b.N, 200) {
					q := time.Now()
					var buckets int
					for _, id := range ids {
						bs, err := tel.Buckets(ctx, id, now.Add(-r.span), now, r.step)
						if err != nil {
							b.Fatal(err)
						}
						buckets += len(bs)
					}
					took = append(took, time.Since(q))
					if buckets == 0 {
						b.Fatal("no buckets")
					}
				}
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
	// Raw points: the latest 1,000 of the last hour, and of a day ago.
	b.Run("device/points", func(b *testing.B) {
		var took []time.Duration
		for range max(b.N, 200) {
			q := time.Now()
			pts, err := tel.Points(ctx, "busy", now.Add(-time.Hour), now, 1000)
			if err != nil || len(pts) != 1000 {
				b.Fatal(len(pts), err)
			}
			took = append(took, time.Since(q))
		}
		slices.Sort(took)
		b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
	})
}
