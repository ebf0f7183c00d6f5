package main

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"
)

func TestSetGCDefaults(t *testing.T) {
	prevPercent := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(prevPercent)
		debug.SetMemoryLimit(prevLimit)
	})
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cgroup := func(content string, err error) func(string) ([]byte, error) {
		return func(path string) ([]byte, error) {
			if path != cgroupMemoryMax {
				t.Errorf("read %s", path)
			}
			return []byte(content), err
		}
	}

	// Nothing in the environment, a container limited to 1 GiB.
	gogc, limit := setGCDefaults(env(nil), cgroup("1073741824\n", nil))
	if gogc != defaultGOGC || debug.SetGCPercent(100) != defaultGOGC {
		t.Errorf("GOGC default: got %d", gogc)
	}
	if want := int64(1073741824) / 10 * 9; limit != want || debug.SetMemoryLimit(-1) != want {
		t.Errorf("memory limit: got %d, want %d", limit, want)
	}
	debug.SetMemoryLimit(math.MaxInt64)

	// The operator's GOGC and GOMEMLIMIT win: nothing is changed.
	gogc, limit = setGCDefaults(env(map[string]string{"GOGC": "50", "GOMEMLIMIT": "512MiB"}), cgroup("1073741824", nil))
	if gogc != 0 || limit != 0 || debug.SetGCPercent(100) != 100 || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		t.Errorf("with GOGC and GOMEMLIMIT set: changed to %d, %d", gogc, limit)
	}

	// No container limit ("max"), or no cgroup file: no memory limit.
	for _, read := range []func(string) ([]byte, error){cgroup("max\n", nil), cgroup("", errors.New("no such file"))} {
		if _, limit := setGCDefaults(env(nil), read); limit != 0 || debug.SetMemoryLimit(-1) != math.MaxInt64 {
			t.Errorf("without a container limit: memory limit %d", limit)
		}
	}
}
