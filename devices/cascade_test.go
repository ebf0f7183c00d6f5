package devices

import (
	"context"
	"testing"
	"time"
)

// Deleting a device's registry row takes its history, commands and twin
// with it, so that a device registered later under the same id starts
// clean.
func TestDeleteDeviceCascades(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "gone", "kept")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	cmds, err := OpenCommands(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmds.Close() })
	tw, err := OpenTwins(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tw.Close() })

	for _, id := range []string{"gone", "kept"} {
		if !tel.Add(id, mustSample(t, `{"temp":21}`), time.Now()) {
			t.Fatal("Add refused")
		}
		old := mustSample(t, `{"temp":20}`)
		old.TS = time.Now().Add(-48 * time.Hour)
		if !tel.Add(id, old, time.Now()) {
			t.Fatal("Add refused")
		}
		if _, err := cmds.Create(ctx, NewCommand{DeviceID: id, Name: "reboot", Timeout: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.PatchDesired(ctx, id, []byte(`{"mode":"eco"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The old points move to the minute rollups.
	if n, err := tel.PruneBefore(ctx, time.Now().Add(-24*time.Hour)); err != nil || n != 2 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	if _, err := db.W.ExecContext(ctx, `DELETE FROM devices WHERE id = 'gone'`); err != nil {
		t.Fatal(err)
	}
	count := func(table, id string) int {
		var n int
		if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM `+table+` WHERE device_id = ?`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, table := range []string{"telemetry_chunks", "telemetry_1m", "telemetry_1h", "commands", "twins"} {
		if n := count(table, "gone"); n != 0 {
			t.Errorf("%s still holds %d rows of the deleted device", table, n)
		}
		if n := count(table, "kept"); n == 0 {
			t.Errorf("%s lost the rows of the device that was kept", table)
		}
	}
	twin, err := tw.Get(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if len(twin.Desired) != 0 || twin.DesiredVersion != 0 {
		t.Errorf("a device registered again under the id would inherit desired %v (v%d)", twin.Desired, twin.DesiredVersion)
	}
}
