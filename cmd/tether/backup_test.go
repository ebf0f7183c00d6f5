package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/testlog"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestBackupFileMode: a backup holds what the database holds (password
// hashes, the token signing key), so it is 0600 like the database.
func TestBackupFileMode(t *testing.T) {
	dir := t.TempDir()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.Exec(`CREATE TABLE t(x); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dst := filepath.Join(t.TempDir(), "backup.db")
	if _, err := backupDB(context.Background(), filepath.Join(dir, devices.FileName), dst); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != devices.FileMode {
		t.Errorf("backup mode %04o, want %04o", m, devices.FileMode)
	}
}

// TestStartupWarnsOpenDataDir: a data directory other users may read is
// named in a warning at start-up; a private one is not.
func TestStartupWarnsOpenDataDir(t *testing.T) {
	for _, m := range []os.FileMode{0o755, 0o700} {
		cfg := testConfig(t)
		if err := os.Chmod(cfg.DataDir, m); err != nil {
			t.Fatal(err)
		}
		var logBuf testlog.Buffer
		a, err := startApp(cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.shutdown(ctx); err != nil {
			t.Error(err)
		}
		cancel()
		warned := strings.Contains(logBuf.String(), "level=WARN msg=\"data directory is readable by other users\"")
		if warned != (m == 0o755) {
			t.Errorf("data directory %04o: warned %v; log:\n%s", m, warned, logBuf.String())
		}
	}
}

// TestBackupOnPostgresRefused: where the registry is in PostgreSQL
// (TETHER_STORAGE_POSTGRES_URL), backup and restore say to use pg_dump
// instead of copying a data directory's SQLite files (here an old one
// that would have been copied), without echoing the URL's password.
func TestBackupOnPostgresRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	t.Setenv("TETHER_STORAGE_POSTGRES_URL", "postgres://tether:pg-secret-pw@127.0.0.1:1/tether")
	dst := filepath.Join(t.TempDir(), "backup.db")
	for _, run := range []func(context.Context, []string, io.Writer, io.Writer) error{runBackup, runRestore} {
		var out, errb bytes.Buffer
		err := run(context.Background(), []string{"--data-dir", dir, dst}, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), "pg_dump") || strings.Contains(err.Error()+out.String()+errb.String(), "pg-secret-pw") {
			t.Fatalf("on PostgreSQL: %v (%s%s)", err, out.String(), errb.String())
		}
	}
	if _, err := os.Stat(dst); err == nil {
		t.Fatal("a backup was written")
	}
}

// TestBackupOnPostgresFlagRefused: a server given PostgreSQL by its flag
// or configuration file (not the variable, which backup would see) marks
// its data directory, so backup and restore there explain PostgreSQL and
// pg_dump, as with TETHER_STORAGE_POSTGRES_URL, rather than "no
// database". A server started on the directory with SQLite removes the
// mark, and backup works again.
func TestBackupOnPostgresFlagRefused(t *testing.T) {
	pg := testpg.New(t)
	t.Setenv("TETHER_STORAGE_POSTGRES_URL", "")
	cfg := testConfig(t)
	cfg.Storage.PostgresURL = pg.NewDatabase(t) // as --postgres sets it
	start := func(cfg configs.Config) {
		t.Helper()
		a := startTestApp(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	start(cfg)
	dst := filepath.Join(t.TempDir(), "backup.db")
	for _, run := range []func(context.Context, []string, io.Writer, io.Writer) error{runBackup, runRestore} {
		var out, errb bytes.Buffer
		err := run(context.Background(), []string{"--data-dir", cfg.DataDir, dst}, &out, &errb)
		if err == nil {
			t.Fatalf("on PostgreSQL: no error (%s%s)", out.String(), errb.String())
		}
		for _, want := range []string{"started with PostgreSQL (--postgres", "are in PostgreSQL", "pg_dump"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q lacks %q", err, want)
			}
		}
		if strings.Contains(err.Error(), "no database") || strings.Contains(err.Error(), "postgres://") {
			t.Errorf("%q", err)
		}
	}
	if _, err := os.Stat(dst); err == nil {
		t.Fatal("a backup was written")
	}

	cfg.Storage.PostgresURL = ""
	start(cfg)
	var out, errb bytes.Buffer
	if err := runBackup(context.Background(), []string{"--data-dir", cfg.DataDir, dst}, &out, &errb); err != nil {
		t.Fatalf("backup after a start on SQLite: %v", err)
	}
}
