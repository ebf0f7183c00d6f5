package simulator

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// memory is a process's resident memory from /proc/PID/status.
type memory struct {
	RSSKB  int64 // VmRSS
	PeakKB int64 // VmHWM
}

// readMemory reads the memory of process pid (Linux only).
func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, fmt.Errorf("read broker memory: %w", err)
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &m.RSSKB
		case "VmHWM":
			dst = &m.PeakKB
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("read broker memory: %s: %w", key, err)
		}
		*dst = n
	}
	if err := sc.Err(); err != nil {
		return memory{}, fmt.Errorf("read broker memory: %w", err)
	}
	if m.RSSKB == 0 {
		return memory{}, fmt.Errorf("read broker memory: no VmRSS for pid %d", pid)
	}
	return m, nil
}
