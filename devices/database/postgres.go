package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgresConns is the most connections one node opens to PostgreSQL.
const PostgresConns = 16

// OpenPostgres connects to the PostgreSQL database at connURL (a
// postgres:// URL or a "key=value" connection string, as libpq takes
// them) and makes sure it has schema_migrations and the functions the
// stores call (postgres_compat.go).
func OpenPostgres(ctx context.Context, connURL string) (*DB, error) {
	name := redact(connURL)
	cfg, err := pgx.ParseConfig(connURL)
	if err != nil {
		return nil, errorf(name, errors.New("cannot parse the PostgreSQL URL (storage.postgres_url)"))
	}
	p := sql.OpenDB(connector{pgx: stdlib.GetConnector(*cfg)})
	p.SetMaxOpenConns(PostgresConns)
	p.SetMaxIdleConns(PostgresConns)
	db := &DB{W: p, R: p, Dialect: Postgres, name: name, pg: cfg}
	if err := p.PingContext(ctx); err != nil {
		p.Close()
		return nil, errorf(name, err)
	}
	if err := createMigrations(ctx, p); err != nil {
		p.Close()
		return nil, fmt.Errorf("open database %s: create schema_migrations: %w", name, err)
	}
	if err := db.Migrate(ctx, "database", Schema{Postgres: compatSchema}); err != nil {
		p.Close()
		return nil, errorf(name, err)
	}
	return db, nil
}

// createMigrations creates schema_migrations under the migrations'
// advisory lock: CREATE TABLE IF NOT EXISTS is not safe against itself in
// PostgreSQL (two nodes starting together: one fails on the catalog with
// "type schema_migrations already exists").
func createMigrations(ctx context.Context, p *sql.DB) error {
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, migrateLock); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component  TEXT NOT NULL,
		version    INTEGER NOT NULL,
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
		PRIMARY KEY (component, version))`); err != nil {
		return err
	}
	return tx.Commit()
}

// isPostgresConstraint reports a PostgreSQL integrity constraint violation
// (SQLSTATE class 23).
func isPostgresConstraint(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "23")
}

// redact is connURL without its password, for messages.
func redact(connURL string) string {
	u, err := url.Parse(connURL)
	if err != nil || u.Scheme == "" {
		return "(postgres)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
