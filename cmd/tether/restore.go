package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/database"
)

// runRestore replaces the database of a data directory with a backup
// written by `tether backup` (SPEC §8). It takes the data directory's
// lock, so it refuses while a server runs on it; the database it replaces
// (with its -wal and -shm files) is kept beside it, renamed, not deleted.
func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("restore", "restore [--data-dir DIR] FILE", stderr)
	dataDir := flags.String("data-dir", "", "directory of the database to replace (TETHER_DATA_DIR; default "+defaultDataDir()+")")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() != 1 {
		fmt.Fprintln(stderr, "tether restore: want exactly one argument, the backup file")
		flags.Usage()
		return errUsage
	}
	dir := *dataDir
	if dir == "" {
		dir = dataDirFromEnv()
	}
	if err := onPostgres("restore", dir); err != nil {
		return err
	}
	kept, err := restoreDB(ctx, flags.Arg(0), dir, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %s into %s\n", flags.Arg(0), filepath.Join(dir, devices.FileName))
	if kept != "" {
		fmt.Fprintf(stdout, "the database it replaced is kept as %s (delete it when you no longer need it)\n", kept)
	}
	return nil
}

// restoreDB checks the backup at src (and src+".sessions", the MQTT
// session store's copy, when `tether backup` wrote one) and installs it as
// dir's database. It returns the name under which the replaced registry
// database was kept ("" if there was none). The session store is replaced
// too: by the backup's copy, or, for a backup without one, by nothing, so
// that no session outlives the registry it belonged to; the replaced file
// is kept under the same suffix.
func restoreDB(ctx context.Context, src, dir string, now time.Time) (kept string, err error) {
	if err := checkBackup(ctx, src); err != nil {
		return "", err
	}
	sessSrc := src + ".sessions"
	if _, err := os.Stat(sessSrc); err == nil {
		if err := checkIntegrity(ctx, sessSrc); err != nil {
			return "", fmt.Errorf("restore: %s is not an intact SQLite database: %w", sessSrc, err)
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		sessSrc = ""
	} else {
		return "", fmt.Errorf("restore: %w", err)
	}
	lock, err := devices.LockDataDir(dir)
	if err != nil {
		if errors.Is(err, devices.ErrLocked) {
			return "", fmt.Errorf("restore: refusing to replace a live database: %w", err)
		}
		return "", fmt.Errorf("restore: %w", err)
	}
	defer lock.Unlock()

	suffix := ".before-restore-" + now.UTC().Format("20060102T150405Z")
	kept, err = installFile(src, filepath.Join(dir, devices.FileName), suffix)
	if err != nil {
		return "", err
	}
	if _, err := installFile(sessSrc, filepath.Join(dir, sessions.FileName), suffix); err != nil {
		return kept, err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the renames, durably
		d.Close()
	}
	return kept, nil
}

// installFile copies src next to dst and renames it into place, keeping
// the database it replaces (with its WAL, which may hold its last
// commits, and shared-memory file) under dst+suffix. With src "", dst is
// only moved aside.
func installFile(src, dst, suffix string) (kept string, err error) {
	var tmpName string
	if src != "" {
		// Copy next to the destination first, so the rename below is
		// atomic and a failed copy leaves the current database untouched.
		tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".restore-*")
		if err != nil {
			return "", fmt.Errorf("restore: %w", err)
		}
		tmpName = tmp.Name()
		defer os.Remove(tmpName)
		in, err := os.Open(src)
		if err != nil {
			tmp.Close()
			return "", fmt.Errorf("restore: %w", err)
		}
		_, err = io.Copy(tmp, in)
		in.Close()
		if err == nil {
			err = tmp.Chmod(0o600)
		}
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("restore: copy %s: %w", src, err)
		}
	}
	if _, err := os.Stat(dst); err == nil {
		kept = dst + suffix
		for _, ext := range []string{"", "-wal", "-shm"} {
			if err := os.Rename(dst+ext, kept+ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("restore: keep the current database: %w", err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("restore: %w", err)
	} else {
		// No database, but a stray WAL would be replayed into the backup.
		for _, ext := range []string{"-wal", "-shm"} {
			if err := os.Remove(dst + ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("restore: %w", err)
			}
		}
	}
	if tmpName != "" {
		if err := os.Rename(tmpName, dst); err != nil {
			return "", fmt.Errorf("restore: %w", err)
		}
	}
	return kept, nil
}

// checkBackup makes sure src is an intact Tether database before anything
// is replaced with it.
func checkBackup(ctx context.Context, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("restore: %s is not a regular file", src)
	}
	if err := checkIntegrity(ctx, src); err != nil {
		return fmt.Errorf("restore: %s is not an intact SQLite database: %w", src, err)
	}
	db, err := sql.Open("sqlite", database.FileURI(src, "mode=ro"))
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'`).Scan(&n); err != nil || n != 1 {
		return fmt.Errorf("restore: %s is not a Tether database (no devices table)", src)
	}
	return nil
}
