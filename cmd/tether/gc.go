package main

import (
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultGOGC is the garbage collector's target for `tether serve` when
// the environment sets no GOGC: the heap may grow to three times the live
// heap between collections instead of twice (Go's 100). A broker's live
// heap is small next to what it allocates per message (the engine's
// packet copies, its subscriber maps), so collections were about a fifth
// of its CPU at saturation; 200 halves how often they run, for about
// 1.5× the heap. BenchmarkRoutingGC in broker/ measures it.
const defaultGOGC = 200

// cgroupMemoryMax is where a container's memory limit is (cgroup v2).
const cgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// setGCDefaults applies defaultGOGC unless GOGC is set, and, unless
// GOMEMLIMIT is set, a soft memory limit of 90 % of the container's
// memory limit if there is one: the collector then runs harder as the
// heap nears the limit instead of the container being killed, which is
// what makes a higher GOGC safe. It returns what it set (0: left alone).
func setGCDefaults(getenv func(string) string, readFile func(string) ([]byte, error)) (gogc int, limit int64) {
	if getenv("GOGC") == "" {
		gogc = defaultGOGC
		debug.SetGCPercent(gogc)
	}
	if getenv("GOMEMLIMIT") == "" {
		if max := containerMemoryMax(readFile); max > 0 {
			limit = max / 10 * 9
			debug.SetMemoryLimit(limit)
		}
	}
	return gogc, limit
}

// containerMemoryMax returns the cgroup v2 memory limit in bytes, or 0
// when there is none ("max") or it cannot be read.
func containerMemoryMax(readFile func(string) ([]byte, error)) int64 {
	b, err := readFile(cgroupMemoryMax)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return n
}
