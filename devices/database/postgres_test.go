package database

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/tether-iot/tether/internal/testpg"
)

// bothDialects opens a new SQLite file and a new PostgreSQL database.
func bothDialects(t *testing.T) []*DB {
	t.Helper()
	lite, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lite.Close() })
	pg, err := OpenPostgres(context.Background(), testpg.New(t).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return []*DB{lite, pg}
}

// TestCompatFunctions: the SQLite functions the stores call give the same
// answers on PostgreSQL (JSON compared parsed: jsonb spaces and orders
// keys its own way).
func TestCompatFunctions(t *testing.T) {
	dbs := bothDialects(t)
	ctx := context.Background()
	patches := [][2]string{
		{`{}`, `{"a":1}`},
		{`{"a":1,"b":2}`, `{"a":null}`},
		{`{"a":{"x":1,"y":2}}`, `{"a":{"y":null,"z":3}}`},
		{`{"a":[1,2]}`, `{"a":[3]}`},
		{`{"a":1}`, `{"a":{"b":{"c":null}}}`},
		{`{"s":"it's ?"}`, `{"t":"\u00e9"}`},
		{`[1]`, `{"a":1}`},
	}
	for _, p := range patches {
		var got [2]any
		for i, db := range dbs {
			var s string
			if err := db.R.QueryRowContext(ctx, `SELECT json_patch(?, ?)`, p[0], p[1]).Scan(&s); err != nil {
				t.Fatalf("%s: json_patch(%s, %s): %v", db.Dialect, p[0], p[1], err)
			}
			if err := json.Unmarshal([]byte(s), &got[i]); err != nil {
				t.Fatalf("%s: json_patch(%s, %s) = %s: %v", db.Dialect, p[0], p[1], s, err)
			}
		}
		if !reflect.DeepEqual(got[0], got[1]) {
			t.Errorf("json_patch(%s, %s): sqlite %v, postgres %v", p[0], p[1], got[0], got[1])
		}
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`SELECT json_valid(?) AND 1 = 1`, []any{`{"a":1}`}},
		{`SELECT json_valid(?) AND 1 = 1`, []any{`{"a":`}},
		{`SELECT json_type(?) = 'object'`, []any{`{"a":1}`}},
		{`SELECT json_type(?) = 'object'`, []any{`[1]`}},
		{`SELECT EXISTS (SELECT 1 FROM json_each(?) WHERE key = ? AND value = ?)`, []any{`{"room":"k1"}`, "room", "k1"}},
		{`SELECT EXISTS (SELECT 1 FROM json_each(?) WHERE key = ? AND value = ?)`, []any{`{"room":"k1"}`, "room", "k2"}},
		{`SELECT instr(lower(?), ?) > 0`, []any{"Sensor-42", "sor-4"}},
		{`SELECT instr(lower(?), ?) > 0`, []any{"Sensor-42", "x"}},
	} {
		var got [2]bool
		for i, db := range dbs {
			if err := db.R.QueryRowContext(ctx, q.sql, q.args...).Scan(&got[i]); err != nil {
				t.Fatalf("%s: %s %v: %v", db.Dialect, q.sql, q.args, err)
			}
		}
		if got[0] != got[1] {
			t.Errorf("%s %v: sqlite %v, postgres %v", q.sql, q.args, got[0], got[1])
		}
	}
}

// TestConstraintAndTypes: a duplicate key is IsConstraint in both
// dialects; a bool is stored as 0 or 1, bytes come back as they went.
func TestConstraintAndTypes(t *testing.T) {
	ctx := context.Background()
	for _, db := range bothDialects(t) {
		s := Schema{
			SQLite:   []string{`CREATE TABLE t (id TEXT PRIMARY KEY, on_ INTEGER NOT NULL, b BLOB NOT NULL)`},
			Postgres: []string{`CREATE TABLE t (id TEXT PRIMARY KEY, on_ INTEGER NOT NULL, b BYTEA NOT NULL)`},
		}
		if err := db.Migrate(ctx, "test", s); err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.ExecContext(ctx, `INSERT INTO t (id, on_, b) VALUES (?, ?, ?)`, "x", true, []byte{0, 1, 255}); err != nil {
			t.Fatalf("%s: %v", db.Dialect, err)
		}
		_, err := db.W.ExecContext(ctx, `INSERT INTO t (id, on_, b) VALUES (?, ?, ?)`, "x", false, []byte{})
		if !IsConstraint(err) {
			t.Errorf("%s: duplicate key: %v, want a constraint error", db.Dialect, err)
		}
		var on int
		var b []byte
		if err := db.R.QueryRowContext(ctx, `SELECT on_, b FROM t WHERE id = ?`, "x").Scan(&on, &b); err != nil || on != 1 || string(b) != "\x00\x01\xff" {
			t.Errorf("%s: got %d %x, %v", db.Dialect, on, b, err)
		}
	}
}

// TestPostgresMigrateTogether: nodes that start together on an empty
// database migrate one at a time and all succeed; a second start applies
// nothing; an older binary on a newer database is refused.
func TestPostgresMigrateTogether(t *testing.T) {
	ctx := context.Background()
	url := testpg.New(t).NewDatabase(t)
	steps := Schema{Postgres: []string{
		`CREATE TABLE a (id INTEGER PRIMARY KEY)`,
		`INSERT INTO a VALUES (1)`,
		`ALTER TABLE a ADD COLUMN b TEXT NOT NULL DEFAULT ''`,
	}}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := OpenPostgres(ctx, url)
			if err == nil {
				err = db.Migrate(ctx, "together", steps)
				db.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	db, err := OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n, v int
	if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM a`).Scan(&n); err != nil || n != 1 {
		t.Errorf("rows %d (%v), want 1: a step ran twice", n, err)
	}
	if err := db.R.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations WHERE component = 'together'`).Scan(&v); err != nil || v != 3 {
		t.Errorf("version %d (%v), want 3", v, err)
	}
	err = db.Migrate(ctx, "together", Schema{Postgres: steps.Postgres[:2]})
	if err == nil || !strings.Contains(err.Error(), "refusing to run an older binary") {
		t.Errorf("older binary: %v", err)
	}
	if err := db.Migrate(ctx, "sqlite-only", Schema{SQLite: []string{`SELECT 1`}}); err == nil {
		t.Error("a store without PostgreSQL steps migrated")
	}
}

// TestOpenPostgresErrorsHidePassword: a bad URL or an unreachable server
// is an error that names the database without its password.
func TestOpenPostgresErrorsHidePassword(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{
		"postgres://tether:s3cret-pw@127.0.0.1:1/tether?connect_timeout=1",
		"postgres://tether@127.0.0.1:1/tether?password=s3cret-pw&connect_timeout=1",
		"postgres://tether:s3cret-pw@[::1/x",
	} {
		_, err := OpenPostgres(ctx, u)
		if err == nil {
			t.Fatalf("%s: opened", u)
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

// TestIsTransient: what the database refuses in a statement is not
// transient; a lock held past the wait, a connection killed and a
// context that ended are.
func TestIsTransient(t *testing.T) {
	ctx := context.Background()
	lite, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	liteOther, err := OpenFile(lite.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer liteOther.Close()
	url := testpg.New(t).NewDatabase(t)
	pg, err := OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	pgOther, err := OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pgOther.Close()
	for _, dbs := range [][2]*DB{{lite, liteOther}, {pg, pgOther}} {
		db, other := dbs[0], dbs[1]
		if err := db.Migrate(ctx, "test", Schema{
			SQLite:   []string{`CREATE TABLE t (id TEXT PRIMARY KEY)`},
			Postgres: []string{`CREATE TABLE t (id TEXT PRIMARY KEY)`},
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.ExecContext(ctx, `INSERT INTO t VALUES ('x')`); err != nil {
			t.Fatal(err)
		}
		check := func(what string, want bool, err error) {
			t.Helper()
			if err == nil {
				t.Fatalf("%s: %s: no error", db.Dialect, what)
			}
			if IsTransient(err) != want {
				t.Errorf("%s: %s: IsTransient(%v) = %v, want %v", db.Dialect, what, err, !want, want)
			}
		}
		_, err := db.W.ExecContext(ctx, `INSERT INTO t VALUES ('x')`)
		check("duplicate key", false, err)
		_, err = db.W.ExecContext(ctx, `SELECT json_patch('{}', '{"a":')`)
		check("malformed JSON", false, err)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err = db.W.ExecContext(cctx, `INSERT INTO t VALUES ('y')`)
		check("context canceled", true, err)

		// Another connection holds the write lock past the wait.
		hold, err := other.W.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if db.Dialect == SQLite {
			if _, err := db.W.ExecContext(ctx, `PRAGMA busy_timeout = 50`); err != nil { // W is one connection
				t.Fatal(err)
			}
			if _, err := hold.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
				t.Fatal(err)
			}
			_, err = db.W.ExecContext(ctx, `INSERT INTO t VALUES ('z')`)
			check("SQLITE_BUSY", true, err)
		} else {
			if _, err := hold.ExecContext(ctx, `BEGIN`); err != nil {
				t.Fatal(err)
			}
			if _, err := hold.ExecContext(ctx, `SELECT * FROM t WHERE id = 'x' FOR UPDATE`); err != nil {
				t.Fatal(err)
			}
			tx, err := db.W.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '50ms'`); err != nil {
				t.Fatal(err)
			}
			_, err = tx.ExecContext(ctx, `UPDATE t SET id = 'w' WHERE id = 'x'`)
			check("lock timeout", true, err)
			tx.Rollback()
			tx, err = db.W.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.ExecContext(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
			check("connection terminated", true, err)
			tx.Rollback()
		}
		if _, err := hold.ExecContext(ctx, `ROLLBACK`); err != nil {
			t.Fatal(err)
		}
		hold.Close()
	}
}
