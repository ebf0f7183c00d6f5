package devices

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockName is the lock file inside the data directory.
const LockName = "tether.lock"

// ErrLocked is returned (wrapped) by LockDataDir when another process
// holds the data directory.
var ErrLocked = errors.New("data directory in use")

// DirLock is the exclusive hold of one process on a data directory: one
// server (or restore) per directory at a time. The operating system
// releases it when the process ends, however it ends, so a killed server
// leaves no stale lock behind.
type DirLock struct {
	f *os.File
}

// LockDataDir creates dir if needed and takes its lock without waiting.
// If another process holds it, the error names the directory and, when
// known, that process's id, and wraps ErrLocked.
func LockDataDir(dir string) (*DirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: lock: %w", dir, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errWouldBlock) {
			holder := ""
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = fmt.Sprintf(" (pid %d)", pid)
				}
			}
			abs, _ := filepath.Abs(dir)
			return nil, fmt.Errorf("%w: %s is used by another tether process%s; stop it, or give this one another --data-dir",
				ErrLocked, abs, holder)
		}
		return nil, fmt.Errorf("data directory %s: lock %s: %w", dir, path, err)
	}
	// The holder's pid, for the message above; best effort.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &DirLock{f: f}, nil
}

// Unlock releases the lock. It is safe to call on nil and more than once.
func (l *DirLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the descriptor drops the flock
	l.f = nil
	return err
}
