package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// BenchmarkTelemetryStorage measures what the telemetry history costs on
// disk for each built-in profile: 50 devices × 2,000 samples each (the
// profile's interval with the simulator's default ±10 % jitter, ending
// now), generated as `tether sim` makes them, through the real parser and
// writer into a real SQLite file, flushed after each round of samples as
// the writer's one-second flush does in a live run. It reports the file's growth (after a
// WAL checkpoint, indexes and free pages included) per point and per
// value (one metric of one point).
//
//	go test -run XXX -bench TelemetryStorage -benchtime 1x ./simulator/
func BenchmarkTelemetryStorage(b *testing.B) {
	const devs, samples = 50, 2000
	for _, prof := range DefaultFleet().Profiles {
		b.Run(prof.Name, func(b *testing.B) {
			for range b.N {
				perPoint, perValue := measureStorage(b, &prof, devs, samples)
				b.ReportMetric(perPoint, "B/point")
				b.ReportMetric(perValue, "B/value")
			}
		})
	}
}

// measureStorage stores devs × samples points of prof and returns the
// file's growth per point and per value.
func measureStorage(b *testing.B, prof *Profile, devs, samples int) (perPoint, perValue float64) {
	ctx := context.Background()
	db, err := devices.OpenDB(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.W.Exec(`CREATE TABLE devices (id TEXT PRIMARY KEY, last_seen TEXT, last_values TEXT NOT NULL DEFAULT '{}')`); err != nil {
		b.Fatal(err)
	}
	ids := make([]string, devs)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%04d", prof.Name, i)
		if _, err := db.W.Exec(`INSERT INTO devices(id) VALUES (?)`, ids[i]); err != nil {
			b.Fatal(err)
		}
	}
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{Retention: 365 * 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	before := fileSize(b, db)
	start := time.Now().Add(-time.Duration(samples) * prof.Interval)
	type dev struct {
		gens     []generator
		settings map[string]any
		next     time.Time
		rng      *rand.Rand
	}
	ds := make([]*dev, devs)
	for i := range ds {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		d := &dev{settings: map[string]any{}, rng: rng}
		for k, v := range prof.Settings {
			d.settings[k] = v
		}
		d.next = start.Add(time.Duration(rng.Int64N(int64(prof.Interval))))
		for j := range prof.Metrics {
			d.gens = append(d.gens, newGenerator(&prof.Metrics[j], rng, start))
		}
		ds[i] = d
	}
	var values int
	for range samples {
		for i, d := range ds {
			now := d.next
			vals := make(map[string]any, len(d.gens)+1)
			for _, g := range d.gens {
				g.sample(now, d.settings, vals)
			}
			values += len(vals)
			vals["ts"] = now.UnixMilli()
			payload, err := json.Marshal(vals)
			if err != nil {
				b.Fatal(err)
			}
			s, err := devices.ParseTelemetry(payload)
			if err != nil {
				b.Fatal(err)
			}
			for !tel.Add(ids[i], s, now) {
				time.Sleep(time.Millisecond)
			}
			d.next = now.Add(time.Duration(float64(prof.Interval) * (1 + 0.1*(2*d.rng.Float64()-1))))
		}
		// The writer flushes every second and a profile's interval is
		// longer: each flush holds one point per device, as in a live run.
		if err := tel.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	if err := tel.Close(); err != nil {
		b.Fatal(err)
	}
	if stored, dropped := tel.Stats(); stored != int64(devs*samples) || dropped != 0 {
		b.Fatalf("stored %d, dropped %d of %d", stored, dropped, devs*samples)
	}
	grown := float64(fileSize(b, db) - before)
	if rows, err := db.R.Query(`SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8`); err == nil {
		for rows.Next() {
			var name string
			var size int64
			if rows.Scan(&name, &size) == nil {
				b.Logf("%s: %s %.2f B/value", prof.Name, name, float64(size)/float64(values))
			}
		}
		rows.Close()
	}
	var blob, chunks int64
	if db.R.QueryRow(`SELECT sum(length(data)), count(*) FROM telemetry_chunks`).Scan(&blob, &chunks) == nil {
		b.Logf("%s: %d chunks, encoded %.2f B/value", prof.Name, chunks, float64(blob)/float64(values))
	}
	// What the points become once retention prunes them: minute rollups.
	tel, err = devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{Retention: 365 * 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tel.PruneBefore(ctx, time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	tel.Close()
	var minutes int64
	if err := db.R.QueryRow(`SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'telemetry_1m%'`).Scan(&minutes); err == nil {
		b.ReportMetric(float64(minutes)/float64(values), "B/value-pruned-to-minutes")
	}
	return grown / float64(devs*samples), grown / float64(values)
}

// fileSize checkpoints the WAL into the database file and returns its size.
func fileSize(b *testing.B, db *devices.DB) int64 {
	if _, err := db.W.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(db.Path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}
