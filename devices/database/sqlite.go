package database

import (
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// FileName is the database's name inside the data directory.
const FileName = "tether.db"

// Open opens (creating if needed) dir/tether.db. A directory it creates
// has DirMode.
func Open(dir string) (*DB, error) {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return nil, fmt.Errorf("open database: create data dir: %w", err)
	}
	return OpenFile(filepath.Join(dir, FileName))
}

var uriPath = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// FileURI is the SQLite file: URI of path with the query q (encoded
// parameters, or empty): every open of a database file goes through it.
func FileURI(path, q string) string {
	u := "file:" + uriPath.Replace(path)
	if q != "" {
		u += "?" + q
	}
	return u
}

// OpenFile opens (creating if needed) the SQLite database at path. The
// database and the files beside it are FileMode (0600), existing ones
// included.
func OpenFile(path string) (*DB, error) {
	if err := secureFiles(path); err != nil {
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
	// The path goes into a file: URI, where '?' starts the parameters,
	// '#' a fragment and '%' an escape: a data directory named with any
	// of them would open another file.
	dsn := FileURI(path, q.Encode())
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
		return nil, errorf(path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.Ping(); err != nil {
		w.Close()
		return nil, errorf(path, err)
	}
	r, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, errorf(path, err)
	}
	n := runtime.GOMAXPROCS(0) * 2
	if n < 4 {
		n = 4
	}
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	db := &DB{W: w, R: r, Path: path, Dialect: SQLite, name: path}
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
