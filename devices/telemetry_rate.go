package devices

import (
	"sync/atomic"
	"time"
)

// valueRate is the bound on the metric values one device may have stored
// (telemetry.device_values_rate and telemetry.device_values_burst): a
// device publishing within its publish rate could otherwise store 256
// values a message, 25,600 a second at the defaults, and fill the disk.
// A sample that would pass it is routed but not stored, whole.
//
// It is GCRA (the generic cell rate algorithm, a token bucket kept as
// one number): each device's deviceNames.tat is the time at which its
// bucket would be full again. A sample of n values is let through when
// max(tat, now) + n*interval lies at most tau (burst*interval) after
// now, and then moves tat there. One compare-and-swap a sample, on the
// device's own cache line: the publisher's hot path pays a few
// nanoseconds, and no lock.
type valueRate struct {
	interval int64 // ns a value; 0: no bound
	tau      int64 // burst*interval
}

// newValueRate returns the bound of rate values a second in bursts of
// burst; no bound when rate is 0 or less.
func newValueRate(rate, burst int) valueRate {
	if rate <= 0 {
		return valueRate{}
	}
	iv := max(int64(time.Second)/int64(rate), 1)
	return valueRate{interval: iv, tau: int64(max(burst, 1)) * iv}
}

// allow takes n values from the bucket *tat at now (Unix ns), or reports
// that they do not fit (and takes nothing).
func (r valueRate) allow(tat *atomic.Int64, n int, now int64) bool {
	for {
		old := tat.Load()
		t := old
		if t < now || t-now > r.tau {
			// Full (or the clock went back past what the bucket
			// could hold: forget it rather than refuse for as long).
			t = now
		}
		next := t + int64(n)*r.interval
		if next-now > r.tau {
			return false
		}
		if tat.CompareAndSwap(old, next) {
			return true
		}
	}
}

// overRate counts a sample of device (whose names are dn) refused by the
// value rate, and logs the first of each device per minute, with how
// many of its points were not stored since the last such line (never
// the values).
func (t *Telemetry) overRate(device string, dn *deviceNames, values int, arrived int64) {
	t.m.overRate.Inc()
	n := dn.overRate.Add(1)
	if t.rateLogged.Allow(device, time.Unix(0, arrived)) {
		dn.overRate.Add(-n)
		t.log.Warn("telemetry: device over telemetry.device_values_rate: points routed but not stored (first this minute for this device)",
			"device", device, "points_not_stored", n, "values", values,
			"rate", t.opts.DeviceValuesRate, "burst", t.opts.DeviceValuesBurst)
	}
}
