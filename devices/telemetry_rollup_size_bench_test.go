package devices

import (
	"context"
	"testing"
	"time"
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
	benchTelemetryWrite(b, tel, ids, time.Now().Add(-time.Duration(b.N/devs+2)*time.Hour), time.Hour)
}
