package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/database"
)

// runBackup writes an online, consistent copy of the database to FILE.
//
// It may run while `tether serve` runs on the same data directory: SQLite's
// VACUUM INTO reads one snapshot of the database in a read transaction,
// which in WAL mode neither blocks the server's writer nor sees half of
// one of its transactions. The copy is written next to FILE first and
// linked into place, so FILE is never overwritten and never half written.
//
// The MQTT session store has a file of its own (data/sessions.db): it is
// copied the same way to FILE.sessions.
//
// Restore: stop the server, `tether restore FILE` (restore.go; it puts
// FILE.sessions back too when it is there), start.
func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("backup", "backup [--data-dir DIR] FILE", stderr)
	dataDir := flags.String("data-dir", "", "directory of the database to copy (TETHER_DATA_DIR; default "+defaultDataDir()+")")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() != 1 {
		fmt.Fprintln(stderr, "tether backup: want exactly one argument, the file to write")
		flags.Usage()
		return errUsage
	}
	dir := *dataDir
	if dir == "" {
		dir = dataDirFromEnv()
	}
	if err := onPostgres("backup", dir); err != nil {
		return err
	}
	n, err := backupDB(ctx, filepath.Join(dir, devices.FileName), flags.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup of %s written to %s (%d bytes)\n", filepath.Join(dir, devices.FileName), flags.Arg(0), n)
	if src := filepath.Join(dir, sessions.FileName); fileExists(src) {
		dst := flags.Arg(0) + ".sessions"
		n, err := backupDB(ctx, src, dst)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "backup of %s written to %s (%d bytes)\n", src, dst, n)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// backupDB copies the database at src to dst, which must not exist, and
// checks the copy. It returns the copy's size.
func backupDB(ctx context.Context, src, dst string) (int64, error) {
	if _, err := os.Stat(src); err != nil {
		return 0, fmt.Errorf("backup: no database: %w", err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return 0, fmt.Errorf("backup: %s already exists: refusing to overwrite it", dst)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("backup: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	// VACUUM INTO wants a file that does not exist or is empty.
	defer os.Remove(tmpName)

	q := url.Values{}
	q.Add("mode", "ro")
	q.Add("_pragma", "busy_timeout(10000)")
	db, err := sql.Open("sqlite", database.FileURI(src, q.Encode()))
	if err != nil {
		return 0, fmt.Errorf("backup: open %s: %w", src, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, tmpName); err != nil {
		return 0, fmt.Errorf("backup: copy %s: %w", src, err)
	}
	if err := checkIntegrity(ctx, tmpName); err != nil {
		return 0, err
	}
	// Link fails if dst appeared meanwhile: never overwrite.
	if err := os.Link(tmpName, dst); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	return st.Size(), nil
}

// checkIntegrity runs PRAGMA integrity_check on the database at path.
func checkIntegrity(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", database.FileURI(path, "mode=ro"))
	if err != nil {
		return fmt.Errorf("integrity check %s: %w", path, err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("integrity check %s: %w", path, err)
	}
	if res != "ok" {
		return fmt.Errorf("integrity check %s: %s", path, res)
	}
	return nil
}

func defaultDataDir() string { return configs.Default().DataDir }

// onPostgres refuses a backup or restore of data directory dir where the
// server keeps its registry in PostgreSQL: TETHER_STORAGE_POSTGRES_URL
// set here, or the mark the server leaves in its data directory
// (postgresMark) whichever way it was given the URL (--postgres, the
// configuration file, the variable). The SQLite files of the data
// directory are not its data there, and copying them would look like a
// backup while saving nothing that counts.
func onPostgres(cmd, dir string) error {
	const what = "the registry, users, tokens, commands, twins, telemetry (and, in a cluster, the MQTT sessions) are in PostgreSQL, " +
		"which tether %s does not cover; use pg_dump and pg_restore (e.g. pg_dump --format=custom --file tether.dump %s)"
	if v, ok := os.LookupEnv("TETHER_STORAGE_POSTGRES_URL"); ok && v != "" {
		return fmt.Errorf("%s: TETHER_STORAGE_POSTGRES_URL is set: "+what+", or unset the variable to %s the SQLite files of a data directory",
			cmd, cmd, `"$TETHER_STORAGE_POSTGRES_URL"`, cmd)
	}
	mark := filepath.Join(dir, postgresMark)
	if !fileExists(mark) {
		return nil
	}
	return fmt.Errorf("%s: the server of data directory %s was started with PostgreSQL (--postgres, storage.postgres_url "+
		"or TETHER_STORAGE_POSTGRES_URL; %s says so): "+what+"; a server started on this directory without PostgreSQL removes %s",
		cmd, dir, mark, cmd, "URL, the server's PostgreSQL URL", postgresMark)
}

// postgresMark is the file in the data directory that says its server
// keeps its data in PostgreSQL, for tether backup and restore, which do
// not read the server's flags or configuration file. It holds no URL.
const postgresMark = "tether.postgresql"

// markStorage leaves postgresMark in dir when the server's data is in
// PostgreSQL, and removes it when it is in dir's SQLite files.
func markStorage(dir string, postgres bool) error {
	mark := filepath.Join(dir, postgresMark)
	if !postgres {
		if err := os.Remove(mark); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return os.WriteFile(mark, []byte("The tether server of this data directory keeps its registry, users, tokens, commands, twins and\n"+
		"telemetry in PostgreSQL (--postgres, storage.postgres_url or TETHER_STORAGE_POSTGRES_URL), not in SQLite\n"+
		"files here: tether backup and restore refuse this directory; back PostgreSQL up with pg_dump.\n"+
		"A server started here without PostgreSQL removes this file.\n"), devices.FileMode)
}

// dataDirFromEnv is TETHER_DATA_DIR, or the default data directory.
func dataDirFromEnv() string {
	if v, ok := os.LookupEnv("TETHER_DATA_DIR"); ok && v != "" {
		return v
	}
	return defaultDataDir()
}
