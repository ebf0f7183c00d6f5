package simulator

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
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

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 for user space on every architecture Go runs on.
const clockTick = 10 * time.Millisecond

// readCPU reads the CPU time (user and system, all threads) that process
// pid has used so far, from /proc/PID/stat (Linux only), to 10 ms.
func readCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read broker cpu: %w", err)
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so
	// the fields are counted from the last ')'. utime and stime are fields
	// 14 and 15 of proc(5), the 12th and 13th after comm.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("read broker cpu: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("read broker cpu: /proc/%d/stat has %d fields after comm", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read broker cpu: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}
