package devices

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// Real database failures for the batch writers' tests, made by the
// database itself (no mock): triggers that refuse one device's rows, a
// lock held past the writer's wait, a connection the server ends.

// refuseDevice makes the database refuse each row written into table
// (INSERT or UPDATE) for device, until allow: SQLite's RAISE(ABORT),
// PostgreSQL's RAISE EXCEPTION.
func refuseDevice(t *testing.T, db *DB, table, device string) (allow func()) {
	t.Helper()
	name := "refuse_" + table
	var qs, drop []string
	if db.Dialect == database.Postgres {
		qs = []string{
			`CREATE FUNCTION ` + name + `() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.device_id = '` + device + `' THEN RAISE EXCEPTION 'refused by the test'; END IF;
				RETURN NEW;
			END $$`,
			`CREATE TRIGGER ` + name + ` BEFORE INSERT OR UPDATE ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION ` + name + `()`,
		}
		drop = []string{`DROP TRIGGER ` + name + ` ON ` + table}
	} else {
		for _, ev := range []string{"INSERT", "UPDATE"} {
			qs = append(qs, `CREATE TRIGGER `+name+`_`+ev+` BEFORE `+ev+` ON `+table+
				` WHEN NEW.device_id = '`+device+`' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`)
			drop = append(drop, `DROP TRIGGER `+name+`_`+ev)
		}
	}
	exec := func(qs []string) {
		t.Helper()
		for _, q := range qs {
			if _, err := db.W.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
	}
	exec(qs)
	return func() { t.Helper(); exec(drop) }
}

// holdWrites makes every write into table wait on a lock another
// connection holds, until release: on SQLite the database's write lock
// (BEGIN IMMEDIATE; the writer's busy_timeout is cut to 100 ms, so that
// it gives up with SQLITE_BUSY soon), on PostgreSQL an advisory lock that
// a trigger takes with a lock_timeout of 100 ms (lock_not_available).
func holdWrites(t *testing.T, db *DB, table string) (release func()) {
	t.Helper()
	ctx := context.Background()
	var other *sql.DB
	if db.Dialect == database.Postgres {
		for _, q := range []string{
			`CREATE FUNCTION hold_` + table + `() RETURNS trigger LANGUAGE plpgsql SET lock_timeout = '100ms' AS $$
			BEGIN
				PERFORM pg_advisory_xact_lock(4242);
				RETURN NEW;
			END $$`,
			`CREATE TRIGGER hold_` + table + ` BEFORE INSERT OR UPDATE ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION hold_` + table + `()`,
		} {
			if _, err := db.W.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		other = db.W // a connection of its own from the pool
	} else {
		var err error
		if other, err = sql.Open("sqlite", database.FileURI(db.Path, "")); err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.Exec(`PRAGMA busy_timeout = 100`); err != nil { // W is one connection
			t.Fatal(err)
		}
	}
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lock, unlock := `SELECT pg_advisory_lock(4242)`, `SELECT pg_advisory_unlock(4242)`
	if db.Dialect == database.SQLite {
		lock, unlock = `BEGIN IMMEDIATE`, `ROLLBACK`
	}
	if _, err := conn.ExecContext(ctx, lock); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := conn.ExecContext(ctx, unlock); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if db.Dialect == database.SQLite {
			other.Close()
			if _, err := db.W.Exec(`PRAGMA busy_timeout = 10000`); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// killOnce makes the PostgreSQL server end the connection of the first
// statement that writes a row into table (a trigger terminating its own
// backend, once: a sequence is not rolled back), as a server restart or
// a network fault would midway through a batch.
func killOnce(t *testing.T, db *DB, table string) {
	t.Helper()
	killAt(t, db, table, 1)
}

// killAt is killOnce at each of the rows ns (counted from 1) written
// into table, committed or not.
func killAt(t *testing.T, db *DB, table string, ns ...int) {
	t.Helper()
	in := make([]string, len(ns))
	for i, n := range ns {
		in[i] = strconv.Itoa(n)
	}
	for _, q := range []string{
		`CREATE SEQUENCE kill_` + table,
		`CREATE FUNCTION kill_` + table + `() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('kill_` + table + `') IN (` + strings.Join(in, ",") + `) THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
			RETURN NEW;
		END $$`,
		`CREATE TRIGGER kill_` + table + ` BEFORE INSERT OR UPDATE ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION kill_` + table + `()`,
	} {
		if _, err := db.W.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBatchWriteOutOfTime: a batch whose transaction outlasts its context
// (database/sql rolls it back; on SQLite the statements run on without
// the context, stmtContext, and the next finds the transaction gone)
// fails with an error that says it took too long, not that the
// transaction "has already been committed or rolled back".
func TestBatchWriteOutOfTime(t *testing.T) {
	db := openBackendDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := (&batchWrite{name: "test write", n: 1,
		all: func(ctx context.Context, tx *sql.Tx) error {
			<-ctx.Done() // a batch that takes longer than its time
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err := tx.ExecContext(stmtContext(database.SQLite, ctx), `SELECT 1`)
				if err != nil || time.Now().After(deadline) {
					return err
				}
				time.Sleep(10 * time.Millisecond)
			}
		},
		one: func(context.Context, *sql.Tx, int) error { return nil },
	}).run(ctx, db.W)
	if err == nil || !strings.Contains(err.Error(), "took longer") || strings.Contains(err.Error(), "already been committed") {
		t.Fatalf("error %v, want one that says the batch took too long", err)
	}
	if database.IsTransient(err) {
		t.Errorf("%v is transient: the batch would be written again, for as long", err)
	}
}
