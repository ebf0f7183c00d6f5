package devices

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockDataDir: a second hold on a data directory is refused with a
// message naming it, and the lock is free again once released. (Two real
// processes: TestDataDirLockTwoServers in cmd/tether.)
func TestLockDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := LockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, LockName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v, %v", st, err)
	}
	_, err = LockDataDir(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second lock: %v, want ErrLocked naming %s", err, dir)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatalf("second Unlock: %v", err)
	}
	l2, err := LockDataDir(dir)
	if err != nil {
		t.Fatalf("after Unlock: %v", err)
	}
	l2.Unlock()
}
