package devices

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/cputime"
)

// BenchmarkTelemetryWriteNewHours is BenchmarkTelemetryWrite where every
// sample of a device falls in a new hour (a backfill of hourly samples):
// each point inserts its two numbers' hourly rows, the writer's worst case
// for the triggers that count them (telemetry step 7).
//
//	go test -run XXX -bench TelemetryWriteNewHours -benchtime 200000x ./devices/
func BenchmarkTelemetryWriteNewHours(b *testing.B) {
	ctx := context.Background()
	db := openBackendDB(b)
	const devs = 1000
	reg, ids := benchFleet(b, db, devs)
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{LastValues: reg, PruneInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Close()
	base := time.Now().Add(-time.Duration(b.N/devs+2) * time.Hour)
	samples := make([]Sample, 64)
	for i := range samples {
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
		s.TS = base.Add(time.Duration(i/devs) * time.Hour)
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
