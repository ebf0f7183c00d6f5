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
// value rate, notes when (to the second: the time is stored only when
// its second changes, so a device over its rate costs the publish path
// one atomic add and a load), and logs the first of each device per
// minute, with how many of its samples were not stored since the last
// such line (never the values).
func (t *Telemetry) overRate(device string, dn *deviceNames, values int, arrived int64) {
	t.m.overRate.Inc()
	n := dn.notStored.Add(1)
	if dn.notStoredAt.Load()/int64(time.Second) != arrived/int64(time.Second) {
		dn.notStoredAt.Store(arrived)
	}
	if t.rateLogged.Allow(device, time.Unix(0, arrived)) {
		since := n - dn.notStoredLogged.Swap(n)
		t.log.Warn("telemetry: device over telemetry.device_values_rate: points routed but not stored (first this minute for this device)",
			"device", device, "points_not_stored", since, "values", values,
			"rate", t.opts.DeviceValuesRate, "burst", t.opts.DeviceValuesBurst)
	}
}

// NotStored is what telemetry.device_values_rate kept out of a device's
// history on this node since it started: the samples routed but not
// stored, and when the last was (to the second; nil if none).
type NotStored struct {
	Samples int64      `json:"samples"`
	LastAt  *time.Time `json:"last_at"`
	Since   time.Time  `json:"since"`
}

// NotStored returns what the value rate kept out of device's history on
// this node since the store opened. It reads two atomics; no database.
func (t *Telemetry) NotStored(device string) NotStored {
	ns := NotStored{Since: t.opened}
	dn := t.names.lookup(device)
	if dn == nil {
		return ns
	}
	// The time first: a sample refused between the two reads then
	// shows in the count, not a time without it.
	at := dn.notStoredAt.Load()
	if ns.Samples = dn.notStored.Load(); ns.Samples > 0 && at != 0 {
		last := time.Unix(0, at).UTC()
		ns.LastAt = &last
	}
	return ns
}
