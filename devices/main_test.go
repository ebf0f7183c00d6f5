package devices

import (
	"context"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestMain runs the tests twice: on SQLite, then on PostgreSQL (a server
// of their own, internal/testpg), where the tests that open their database
// with openBackendDB get a new PostgreSQL database each, and those about
// SQLite itself skip (sqliteOnly). Without PostgreSQL installed the
// second pass is skipped, except on CI.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		code = runOnPostgres(m)
	}
	if code == 0 {
		if err := goleak.Find(
			// database/sql's connection opener lives until the DB is
			// closed; tests close theirs, but the driver may linger
			// briefly.
			goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testPG is the PostgreSQL server of the second pass; nil in the first.
var testPG *testpg.Server

func runOnPostgres(m *testing.M) int {
	bin, err := testpg.Binaries()
	if err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintf(os.Stderr, "PostgreSQL pass: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "PostgreSQL pass skipped: %v\n", err)
		return 0
	}
	s, err := testpg.Start(bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Stop()
	testPG = s
	defer func() { testPG = nil }()
	if testing.Verbose() {
		fmt.Println("=== the same tests on PostgreSQL")
	}
	return m.Run()
}

// openBackendDB opens a new empty database: a SQLite file in a temporary
// directory, or a PostgreSQL database in the second pass. Closed when tb
// ends.
func openBackendDB(tb testing.TB) *DB {
	tb.Helper()
	var db *DB
	var err error
	if testPG == nil {
		db, err = OpenDB(tb.TempDir())
	} else {
		db, err = database.OpenPostgres(context.Background(), testPG.NewDatabase(tb))
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// sqliteOnly skips tb in the PostgreSQL pass, saying why.
func sqliteOnly(tb testing.TB, why string) {
	tb.Helper()
	if testPG != nil {
		tb.Skip("SQLite only: " + why)
	}
}
