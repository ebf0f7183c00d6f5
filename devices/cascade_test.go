package devices

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// cascadeFixture is a registry with the three stores attached, holding
// history, commands and a twin of the devices "gone" and "kept".
type cascadeFixture struct {
	db   *DB
	reg  *Registry
	tel  *Telemetry
	cmds *Commands
	tw   *Twins
}

func openCascade(t *testing.T) *cascadeFixture {
	t.Helper()
	ctx := context.Background()
	f := &cascadeFixture{db: openTestDB(t, "gone", "kept")}
	f.reg = testRegistry(t, f.db)
	f.tel = openTestTelemetry(t, f.db, &TelemetryOptions{FlushInterval: time.Hour})
	var err error
	if f.cmds, err = OpenCommands(ctx, f.db, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cmds.Close() })
	if f.tw, err = OpenTwins(ctx, f.db, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.tw.Close() })
	f.reg.Attach(f.tel, f.cmds, f.tw)

	for _, id := range []string{"gone", "kept"} {
		if !f.tel.Add(id, mustSample(t, `{"temp":21}`), time.Now()) {
			t.Fatal("Add refused")
		}
		old := mustSample(t, `{"temp":20}`)
		old.TS = time.Now().Add(-48 * time.Hour)
		if !f.tel.Add(id, old, time.Now()) {
			t.Fatal("Add refused")
		}
		if _, err := f.cmds.Create(ctx, NewCommand{DeviceID: id, Name: "reboot", Timeout: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.tw.PatchDesired(ctx, id, []byte(`{"mode":"eco"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The old points move to the minute rollups.
	if n, err := f.tel.PruneBefore(ctx, time.Now().Add(-24*time.Hour)); err != nil || n != 2 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	return f
}

var cascadeTables = []string{"telemetry_chunks", "telemetry_1m", "telemetry_1h", "commands", "twins"}

func (f *cascadeFixture) count(t *testing.T, table, id string) int {
	t.Helper()
	var n int
	if err := f.db.R.QueryRow(`SELECT count(*) FROM `+table+` WHERE device_id = ?`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Deleting a device takes its history, commands and twin with it, so
// that a device registered later under the same id starts clean.
func TestDeleteDeviceCascades(t *testing.T) {
	ctx := context.Background()
	f := openCascade(t)
	if err := f.reg.DeleteDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for _, table := range cascadeTables {
		if n := f.count(t, table, "gone"); n != 0 {
			t.Errorf("%s still holds %d rows of the deleted device", table, n)
		}
		if n := f.count(t, table, "kept"); n == 0 {
			t.Errorf("%s lost the rows of the device that was kept", table)
		}
	}
	if _, _, err := f.reg.CreateDevice(ctx, NewDevice{ID: "gone", Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	twin, err := f.tw.Get(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if len(twin.Desired) != 0 || twin.DesiredVersion != 0 {
		t.Errorf("a device registered again under the id would inherit desired %v (v%d)", twin.Desired, twin.DesiredVersion)
	}
}

// failingStore fails its part of a device's deletion: a fault (a full
// disk, a crash) that cannot be caused for real between two statements
// of one transaction.
type failingStore struct{ told []string }

var errStoreFault = errors.New("store fault")

func (s *failingStore) DeleteDeviceData(context.Context, *sql.Tx, string) error { return errStoreFault }
func (s *failingStore) DeviceDeleted(id string)                                 { s.told = append(s.told, id) }

// A deletion is one transaction: when a store's part fails, the device
// row and every store's rows are still there, nobody is told the device
// went, and deleting again once the fault is gone takes everything.
func TestDeleteDeviceAllOrNothing(t *testing.T) {
	ctx := context.Background()
	f := openCascade(t)
	bad := &failingStore{}
	f.reg.Attach(bad)
	if err := f.reg.DeleteDevice(ctx, "gone"); !errors.Is(err, errStoreFault) {
		t.Fatalf("delete with a failing store: %v", err)
	}
	if !f.reg.HasDevice("gone") {
		t.Fatal("the device went although a store kept its rows")
	}
	if _, err := f.reg.Device(ctx, "gone"); err != nil {
		t.Fatalf("device row: %v", err)
	}
	for _, table := range cascadeTables {
		if n := f.count(t, table, "gone"); n == 0 {
			t.Errorf("%s lost the rows of a device whose deletion failed", table)
		}
	}
	if len(bad.told) != 0 {
		t.Errorf("told of a deletion that failed: %v", bad.told)
	}

	f.reg.stores = f.reg.stores[:len(f.reg.stores)-1]
	if err := f.reg.DeleteDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for _, table := range cascadeTables {
		if n := f.count(t, table, "gone"); n != 0 {
			t.Errorf("%s still holds %d rows of the deleted device", table, n)
		}
	}
}

// The stores' migrations leave no trigger on the registry's table: each
// store owns its tables. The one exception is a store's triggers on its
// own tables: telemetry step 7 keeps the rollups' rows and bytes
// (telemetry_rollup_sizes, read for telemetry.rollup_retention_size) by
// triggers on telemetry_1m and telemetry_1h, on SQLite, where counting
// 10⁸ hourly rows once a minute would read them all. Exactly these.
func TestNoTriggersAcrossOwners(t *testing.T) {
	f := openCascade(t)
	own := map[string]string{
		"telemetry_1m_size_insert": "telemetry_1m", "telemetry_1m_size_update": "telemetry_1m",
		"telemetry_1m_size_delete": "telemetry_1m",
		"telemetry_1h_size_insert": "telemetry_1h", "telemetry_1h_size_delete": "telemetry_1h",
	}
	var names []string
	q := `SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'`
	if f.db.Dialect == database.Postgres {
		q = `SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal`
	}
	rows, err := f.db.R.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var n, table string
		if err := rows.Scan(&n, &table); err != nil {
			t.Fatal(err)
		}
		if f.db.Dialect == database.Postgres || own[n] != table {
			names = append(names, n+" on "+table)
		}
	}
	if len(names) != 0 {
		t.Errorf("triggers left: %v", names)
	}
}
