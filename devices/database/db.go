package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Dialect is the SQL a DB speaks.
type Dialect string

// The dialects.
const (
	// SQLite is one file in the data directory (modernc.org/sqlite).
	SQLite Dialect = "sqlite"
	// Postgres is a PostgreSQL server (pgx), shared by a cluster's nodes.
	Postgres Dialect = "postgres"
)

// DB is the database the stores share.
//
// On SQLite, writes go through W, a pool of exactly one connection, so
// SQLite never sees two writers and never returns SQLITE_BUSY to us; reads
// go through R, a small pool that reads concurrently with the writer
// (WAL). On PostgreSQL, W and R are one pool.
type DB struct {
	W *sql.DB
	R *sql.DB
	// Path is the SQLite file; empty on PostgreSQL.
	Path string
	// Dialect is the SQL W and R speak, for the few statements that
	// differ (placeholders do not: see Rebind).
	Dialect Dialect

	// name is the file or the URL without its password, for logs.
	name string
	// pg is the PostgreSQL connection's configuration, for Listen.
	pg *pgx.ConnConfig
}

// String names the database for a log: the SQLite file, or the
// PostgreSQL URL without its password.
func (db *DB) String() string {
	if db.name == "" {
		return db.Path
	}
	return db.name
}

// Healthy reports a PostgreSQL server that does not answer (for /readyz);
// nil on SQLite, whose file the stores' own errors report.
func (db *DB) Healthy(ctx context.Context) error {
	if db.Dialect != Postgres {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := db.W.PingContext(ctx); err != nil {
		return fmt.Errorf("database: PostgreSQL does not answer: %w", err)
	}
	return nil
}

// Close closes the pools.
func (db *DB) Close() error {
	if db.R == db.W {
		return db.W.Close()
	}
	return errors.Join(db.R.Close(), db.W.Close())
}

// IsConstraint reports a UNIQUE, PRIMARY KEY or other constraint
// violation, in either dialect.
func IsConstraint(err error) bool {
	if err == nil {
		return false
	}
	if isPostgresConstraint(err) {
		return true
	}
	return strings.Contains(err.Error(), "constraint failed")
}

// errorf prefixes an open error with the database's name.
func errorf(name string, err error) error {
	return fmt.Errorf("open database %s: %w", name, err)
}
