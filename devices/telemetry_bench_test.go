package devices

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/cputime"
)

// BenchmarkTelemetryWrite measures the history writer alone: points from
// 1,000 devices queued as fast as the writer takes them (b.N points; the
// producer waits briefly when the queue is full), with the registry
// keeping last values. cpu-us/point is the process's CPU time (user plus
// system, the producer's included) per point.
//
//	go test -run XXX -bench TelemetryWrite -benchtime 1000000x ./devices/
func BenchmarkTelemetryWrite(b *testing.B) {
	ctx := context.Background()
	db := openBackendDB(b) // SQLite, then PostgreSQL (TestMain)
	const devs = 1000
	reg, ids := benchFleet(b, db, devs)
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{LastValues: reg})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Close()
	benchTelemetryWrite(b, tel, ids, time.Now().Add(-time.Hour), time.Millisecond)
}

// benchTelemetryWrite queues b.N points to tel from the devices ids, the
// device i%len(ids)'s samples step apart from base, waiting briefly when
// the queue is full, then flushes, and reports stored/s and cpu-us/point
// (the process's CPU time, the producer's included).
func benchTelemetryWrite(b *testing.B, tel *Telemetry, ids []string, base time.Time, step time.Duration) {
	ctx := context.Background()
	devs := len(ids)
	samples := make([]Sample, 64)
	for i := range samples {
		var err error
		if samples[i], err = ParseTelemetry(fmt.Appendf(nil, `{"temp":%d.5,"hum":%d,"on":true,"fw":"1.2.3"}`, 20+i, 40+i)); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process()
	for i := range b.N {
		s := samples[i%len(samples)]
		s.TS = base.Add(time.Duration(i/devs) * step)
		for !tel.Add(ids[i%devs], s, start) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.StopTimer()
	stored, _ := tel.Stats()
	b.ReportMetric(float64(stored)/el.Seconds(), "stored/s")
	b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(b.N), "cpu-us/point")
}

// BenchmarkTelemetryParse measures the payload parser.
func BenchmarkTelemetryParse(b *testing.B) {
	p := []byte(`{"temp":21.5,"hum":40,"on":true,"fw":"1.2.3","ts":1795662000000}`)
	b.ReportAllocs()
	for range b.N {
		if _, err := ParseTelemetry(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTelemetryParseShared measures the parser as the MQTT hook
// calls it: a compact payload is the sample's JSON itself.
func BenchmarkTelemetryParseShared(b *testing.B) {
	p := []byte(`{"temp":21.5,"hum":40,"on":true,"fw":"1.2.3"}`)
	b.ReportAllocs()
	for range b.N {
		if _, err := ParseTelemetryShared(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTelemetryAdd measures Add as publishers call it, from as many
// goroutines as GOMAXPROCS (1,000 devices, the routing benchmark's
// payload), with the writer storing the points (SQLite, last values
// kept). cpu-us/point is the process's CPU per point, the writer's
// included; the producers wait while the queue is more than half full.
//
//	go test -run XXX -bench TelemetryAdd -benchtime 2000000x ./devices/
func BenchmarkTelemetryAdd(b *testing.B) {
	ctx := context.Background()
	db, err := OpenDB(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() }) // after the registry's
	const devs = 1000
	reg, ids := benchFleet(b, db, devs)
	const queue = 262144
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{LastValues: reg, QueueSize: queue})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Close()
	payloads := make([][]byte, 16)
	for i := range payloads {
		payloads[i] = fmt.Appendf(nil, `{"temp":%d.5,"hum":%d,"on":true,"fw":"1.2.3"}`, 20+i, 40+i)
	}
	var next atomic.Int64
	runtime.GC()
	b.ResetTimer()
	cpu0 := cputime.Process()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			if i%1024 == 0 {
				for stored, _ := tel.Stats(); i-stored > queue/2; stored, _ = tel.Stats() {
					time.Sleep(time.Millisecond)
				}
			}
			s, err := ParseTelemetryShared(payloads[i%16])
			if err != nil {
				panic(err)
			}
			tel.Add(ids[i%devs], s, time.Now())
		}
	})
	if err := tel.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	cpu := cputime.Process() - cpu0
	b.StopTimer()
	stored, dropped := tel.Stats()
	if dropped != 0 || stored != int64(b.N) {
		b.Fatalf("stored %d, dropped %d of %d", stored, dropped, b.N)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/point")
}

// benchFleet opens a registry on db (closed with the benchmark) with n
// devices dev-0000, dev-0001, ..., and returns it and their ids.
func benchFleet(b *testing.B, db *DB, n int) (*Registry, []string) {
	b.Helper()
	reg, err := OpenRegistry(context.Background(), db, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reg.Close() })
	ids := make([]string, n)
	nds := make([]NewDevice, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
		nds[i] = NewDevice{ID: ids[i], Name: ids[i]}
	}
	if _, err := reg.CreateDevices(context.Background(), nds); err != nil {
		b.Fatal(err)
	}
	return reg, ids
}

// BenchmarkChunkAdd measures the writer adding points to open chunks
// (telemetry_build.go, openChunk.add: reading each point's metrics into
// the columns and the hourly rollups), without encoding or SQLite: 1,000
// devices, the routing benchmark's payload, a batch of 16 points a device
// between writes. cpu-ns/point is the process's CPU time per point (less
// disturbed than ns/op by other work on the machine).
//
//	go test -run XXX -bench 'ChunkAdd$' -benchtime 4000000x ./devices/
func BenchmarkChunkAdd(b *testing.B) {
	const devs = 1000
	ids := make([]string, devs)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	payloads := make([][]byte, 16)
	for i := range payloads {
		payloads[i] = fmt.Appendf(nil, `{"temp":%d.5,"hum":%d,"on":true,"fw":"1.2.3"}`, 20+i, 40+i)
	}
	cb, r := newChunkBuilder(database.SQLite), newRollups(true, database.SQLite)
	base := time.Now().Add(-time.Hour).UnixMilli()
	now := time.Now()
	b.ResetTimer()
	cpu0 := cputime.Process()
	for n := 0; n < b.N; {
		for d := 0; d < devs && n < b.N; d++ {
			for k := 0; k < 16 && n < b.N; k, n = k+1, n+1 {
				cb.add(ids[d], base+int64(n/devs), payloads[k], now, r)
			}
		}
		if len(cb.pending) >= devs {
			// As a write does, without encoding: a chunk that is full
			// starts afresh.
			for _, c := range cb.pending {
				c.dirty = false
				if len(c.data.ts) >= 600 {
					delete(cb.open, c.device)
				}
			}
			cb.written(true)
			r.written(true)
		}
	}
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/point")
}
