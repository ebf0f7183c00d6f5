package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// DB is the project's one SQLite database file, opened in WAL mode.
//
// Writes go through W, a pool of exactly one connection, so SQLite never
// sees two writers and never returns SQLITE_BUSY to us; reads go through R,
// a small pool that reads concurrently with the writer (WAL).
type DB struct {
	W    *sql.DB
	R    *sql.DB
	Path string
}

// FileName is the database's name inside the data directory.
const FileName = "tether.db"

// OpenDB opens (creating if needed) dir/tether.db. A directory it creates
// has DirMode; see CheckDataDir for one that exists.
func OpenDB(dir string) (*DB, error) {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return nil, fmt.Errorf("open database: create data dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	return OpenDBFile(path)
}

// OpenDBFile opens (creating if needed) the database at path. The
// database and the files beside it are FileMode (0600), existing ones
// included.
func OpenDBFile(path string) (*DB, error) {
	if err := secureDBFiles(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	for _, p := range []string{
		"busy_timeout(10000)",
		"journal_mode(WAL)",
		// NORMAL in WAL mode: a commit survives a crash of the process
		// (kill -9); only an OS crash or power loss can undo the last
		// commits. See README, "Durability".
		"synchronous(NORMAL)",
		"foreign_keys(1)",
	} {
		q.Add("_pragma", p)
	}
	dsn := "file:" + path + "?" + q.Encode()
	// The writer gets a 64 MB page cache: the telemetry history's
	// (device_id, ts) index takes each batch at one leaf page per device,
	// and with SQLite's default 2 MB a thousand devices thrash it (the
	// writer falls to a few thousand points a second). In the DSN, so a
	// connection the pool reopens has it too.
	wq := url.Values{}
	wq.Add("_pragma", "cache_size(-65536)")
	wq.Add("_pragma", "temp_store(MEMORY)")
	w, err := sql.Open("sqlite", dsn+"&"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.Ping(); err != nil {
		w.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	n := runtime.GOMAXPROCS(0) * 2
	if n < 4 {
		n = 4
	}
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	db := &DB{W: w, R: r, Path: path}
	if _, err := w.Exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL,
		version   INTEGER NOT NULL,
		applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
		PRIMARY KEY (component, version))`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: create schema_migrations: %w", path, err)
	}
	return db, nil
}

// Close closes both pools.
func (db *DB) Close() error {
	return errors.Join(db.R.Close(), db.W.Close())
}

// Migrate applies, in order and each in its own transaction, the steps of
// component's schema that the database has not seen yet. Components (the
// registry, telemetry, the MQTT session store, ...) keep separate version
// sequences so that each owns its tables. A step, once released, is never
// edited: a change is a new step appended to the list.
func (db *DB) Migrate(ctx context.Context, component string, steps []string) error {
	var have int
	if err := db.W.QueryRowContext(ctx,
		`SELECT COALESCE(MAX(version),0) FROM schema_migrations WHERE component = ?`,
		component).Scan(&have); err != nil {
		return fmt.Errorf("migrate %s: %w", component, err)
	}
	if have > len(steps) {
		return fmt.Errorf("migrate %s: database is at version %d, this binary knows %d: refusing to run an older binary on a newer database", component, have, len(steps))
	}
	for v := have + 1; v <= len(steps); v++ {
		tx, err := db.W.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate %s to %d: %w", component, v, err)
		}
		if _, err := tx.ExecContext(ctx, steps[v-1]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate %s to %d: %w", component, v, err)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO schema_migrations(component, version) VALUES (?, ?)`, component, v); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate %s to %d: %w", component, v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate %s to %d: %w", component, v, err)
		}
	}
	return nil
}
