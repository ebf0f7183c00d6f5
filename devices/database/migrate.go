package database

import (
	"context"
	"database/sql"
	"fmt"
)

// Schema is a component's migrations, one list per dialect. A step, once
// released, is never edited: a change is a new step appended to the list.
// The lists are numbered apart (a PostgreSQL database never saw SQLite's
// steps); a component without Postgres steps does not run on PostgreSQL.
type Schema struct {
	SQLite   []string
	Postgres []string
}

// Migrate applies, in order and each in its own transaction, the steps of
// component's schema that the database has not seen yet. Components (the
// registry, telemetry, the MQTT session store, ...) keep separate version
// sequences so that each owns its tables.
//
// On PostgreSQL, nodes starting together migrate one at a time: each step's
// transaction holds an advisory lock and reads the version again.
func (db *DB) Migrate(ctx context.Context, component string, s Schema) error {
	steps := s.SQLite
	if db.Dialect == Postgres {
		if s.Postgres == nil {
			return fmt.Errorf("migrate %s: this store does not run on PostgreSQL", component)
		}
		steps = s.Postgres
	}
	have, err := version(ctx, db.W, component)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", component, err)
	}
	if have > len(steps) {
		return fmt.Errorf("migrate %s: database is at version %d, this binary knows %d: refusing to run an older binary on a newer database", component, have, len(steps))
	}
	for v := have + 1; v <= len(steps); v++ {
		if err := db.step(ctx, component, v, steps[v-1]); err != nil {
			return fmt.Errorf("migrate %s to %d: %w", component, v, err)
		}
	}
	return nil
}

// step applies step v of component in one transaction.
func (db *DB) step(ctx context.Context, component string, v int, stmt string) error {
	tx, err := db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if db.Dialect == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, migrateLock); err != nil {
			return err
		}
		have, err := version(ctx, tx, component)
		if err != nil {
			return err
		}
		if have >= v {
			return nil // another node applied it
		}
	}
	if stmt != "" {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO schema_migrations(component, version) VALUES (?, ?)`, component, v); err != nil {
		return err
	}
	return tx.Commit()
}

// migrateLock is the PostgreSQL advisory lock migrations hold.
const migrateLock int64 = 0x7465746865720001 // "tether" 1

// querier is a *sql.DB or a *sql.Tx.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// version is the last step of component the database has applied.
func version(ctx context.Context, q querier, component string) (int, error) {
	var have int
	err := q.QueryRowContext(ctx,
		`SELECT COALESCE(MAX(version),0) FROM schema_migrations WHERE component = ?`, component).Scan(&have)
	return have, err
}
