package broker

import (
	"fmt"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

// BenchmarkRoutingGC justifies `tether serve`'s default GOGC (200, in
// cmd/tether/gc.go): the routing load of BenchmarkTelemetryRouting
// (1,000 devices publishing QoS 0 through the broker's hooks to one
// subscriber, history off) at GOGC 100 and 200, reporting collections and
// the garbage collector's CPU time (idle mark workers left out) per
// million messages. Both are counts
// of work done, so unlike the rates they hold on a shared machine.
//
//	go test -run XXX -bench RoutingGC -benchtime 1000000x ./broker/
func BenchmarkRoutingGC(b *testing.B) {
	for _, gogc := range []int{100, 200} {
		b.Run(fmt.Sprintf("gogc=%d", gogc), func(b *testing.B) {
			prev := debug.SetGCPercent(gogc)
			defer debug.SetGCPercent(prev)
			before := gcStats()
			benchRouting(b, false)
			after := gcStats()
			per := 1e6 / float64(b.N)
			b.ReportMetric(float64(after.cycles-before.cycles)*per, "gc/1M-msgs")
			b.ReportMetric((after.cpu-before.cpu)*per, "gc-cpu-s/1M-msgs")
		})
	}
}

type gcCounts struct {
	cycles uint64
	cpu    float64 // seconds
}

func gcStats() gcCounts {
	// The collector's CPU time without its idle mark workers, which only
	// run on a processor that has nothing else to do.
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/cpu/classes/gc/mark/idle:cpu-seconds"}}
	metrics.Read(s)
	return gcCounts{cycles: s[0].Value.Uint64(), cpu: s[1].Value.Float64() - s[2].Value.Float64()}
}
