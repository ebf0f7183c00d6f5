package devices

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testlog"
)

// openLoggedCommands opens the commands store on db with its log into
// logs and no sweep during the test.
func openLoggedCommands(t *testing.T, db *DB, logs *testlog.Buffer) *Commands {
	t.Helper()
	c, err := OpenCommands(context.Background(), db, &CommandsOptions{SweepInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// applyBatch writes batch as the writer goroutine does (idle: nothing is
// queued), commands published over MQTT open as RecordSent leaves them.
func applyBatch(t *testing.T, c *Commands, batch []commandOp) {
	t.Helper()
	for i := range batch {
		if batch[i].kind == 'c' {
			c.mu.Lock()
			c.open[batch[i].cmd.ID] = batch[i].cmd.DeviceID
			c.mu.Unlock()
		}
		if !c.budget.take(batch[i].cost()) {
			t.Fatal("queue budget full")
		}
	}
	c.apply(batch)
	if held := c.budget.held(); held != 0 {
		t.Errorf("the budget still holds %d bytes", held)
	}
}

// mqttCommand is a command published over MQTT, as RecordSent queues it.
func mqttCommand(t *testing.T, id, device string, now time.Time) commandOp {
	t.Helper()
	nc := NewCommand{ID: id, DeviceID: device, Name: "x", Params: []byte(`{"SECRETPARAM":1}`)}
	if err := nc.Check(); err != nil {
		t.Fatal(err)
	}
	return commandOp{kind: 'c', cmd: nc.command(now)}
}

// TestCommandsWriteIsolatesFailingChange: a batch holding changes the
// database refuses (every write of device bad's commands, refused by a
// trigger) keeps every other change of the batch, in order; only the
// refused ones are dropped, counted as db_error and logged once a minute
// per device, without params or result; a command published over MQTT
// that could not be recorded is not left open.
func TestCommandsWriteIsolatesFailingChange(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2", "bad")
	var logs testlog.Buffer
	c := openLoggedCommands(t, db, &logs)
	api2, err := c.Create(ctx, NewCommand{DeviceID: "d2", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	apiBad, err := c.Create(ctx, NewCommand{DeviceID: "bad", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	refuseDevice(t, db, "commands", "bad")
	now := time.Now().UTC()
	applyBatch(t, c, []commandOp{
		mqttCommand(t, "m1", "d1", now),
		{kind: 'd', id: apiBad.ID, device: "bad", at: now},
		{kind: 'd', id: api2.ID, device: "d2", at: now},
		mqttCommand(t, "m-bad", "bad", now),
		{kind: 'r', id: apiBad.ID, device: "bad", ok: true, result: []byte(`"SECRETRESULT"`), at: now},
		{kind: 'd', id: "m1", device: "d1", at: now},
		{kind: 'r', id: api2.ID, device: "d2", ok: true, result: []byte(`{"x":1}`), at: now},
	})
	for id, want := range map[string]string{"m1": StatusDelivered, api2.ID: StatusSucceeded, apiBad.ID: StatusPending} {
		got, err := c.Get(ctx, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if got.Status != want {
			t.Errorf("%s (%s): %s, want %s", id, got.DeviceID, got.Status, want)
		}
	}
	if got, _ := c.Get(ctx, api2.ID); string(got.Result) != `{"x":1}` {
		t.Errorf("d2's result %s", got.Result)
	}
	if _, err := c.Get(ctx, "m-bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused command: %v, want not found", err)
	}
	if _, open := c.OpenFor("m-bad"); open {
		t.Error("the refused command is still open")
	}
	if _, open := c.OpenFor(apiBad.ID); !open {
		t.Error("bad's command, whose delivery and response were refused, is no longer open")
	}
	if n := count(c.m.dbErrors); n != 3 {
		t.Errorf("db_error %d, want 3", n)
	}
	if n := count(c.m.writeErrors); n != 0 {
		t.Errorf("write_error %d, want 0", n)
	}
	if ok, delivered := count(c.m.succeeded), count(c.m.delivered); ok != 1 || delivered != 2 {
		t.Errorf("succeeded %d, delivered %d; want 1, 2", ok, delivered)
	}
	// Again: counted, not logged again within the minute.
	applyBatch(t, c, []commandOp{
		{kind: 'r', id: apiBad.ID, device: "bad", ok: false, errMsg: "SECRETERROR", at: now},
		mqttCommand(t, "m2", "d1", now),
	})
	if got, err := c.Get(ctx, "m2"); err != nil || got.Status != StatusPending {
		t.Errorf("m2 after the second batch: %+v, %v", got, err)
	}
	if n := count(c.m.dbErrors); n != 4 {
		t.Errorf("db_error %d, want 4", n)
	}
	out := logs.String()
	if n := strings.Count(out, "device=bad"); n != 1 {
		t.Errorf("the failing device was logged %d times, want once a minute:\n%s", n, out)
	}
	if strings.Contains(out, "SECRET") {
		t.Errorf("params, result or error message in the log:\n%s", out)
	}
	if strings.Contains(out, "level=ERROR") || strings.Contains(out, "device=d") {
		t.Errorf("other devices' changes logged as failed:\n%s", out)
	}
}

// TestCommandsWriteTransientFailsBatch: a fault of the database rather
// than of a change (every write waits on a lock held elsewhere until it
// gives up), outlasting the writer's retries (retryFor), fails the batch
// as a whole, as before: no change is counted
// as refused (db_error) or blamed on its device; they are counted as
// write_error. Once the lock is gone, the next batch is written.
func TestCommandsWriteTransientFailsBatch(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	var logs testlog.Buffer
	c := openLoggedCommands(t, db, &logs)
	release := holdWrites(t, db, "commands")
	now := time.Now().UTC()
	applyBatch(t, c, []commandOp{mqttCommand(t, "m1", "d1", now), mqttCommand(t, "m2", "d2", now)})
	release()
	if n, w := count(c.m.dbErrors), count(c.m.writeErrors); n != 0 || w != 2 {
		t.Errorf("db_error %d, write_error %d; want 0, 2", n, w)
	}
	if out := logs.String(); strings.Contains(out, "device=") || strings.Count(out, "commands: write") != 1 {
		t.Errorf("want one failed batch logged, no device blamed:\n%s", out)
	}
	for _, id := range []string{"m1", "m2"} {
		if _, open := c.OpenFor(id); open {
			t.Errorf("%s, not recorded, is still open", id)
		}
	}
	applyBatch(t, c, []commandOp{mqttCommand(t, "m3", "d1", now)})
	if got, err := c.Get(ctx, "m3"); err != nil || got.Status != StatusPending {
		t.Errorf("m3 after the lock: %+v, %v", got, err)
	}
}

// TestCommandsWriteRidesOutShortFault: the database is locked by another
// connection for a while, then no longer: the batch that met the lock is
// written once it is gone, nothing counted as failed, the commands open.
// (Before, the batch failed on its second try and its changes were lost.)
func TestCommandsWriteRidesOutShortFault(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	var logs testlog.Buffer
	c := openLoggedCommands(t, db, &logs)
	release := holdWrites(t, db, "commands")
	now := time.Now().UTC()
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		applyBatch(t, c, []commandOp{mqttCommand(t, "m1", "d1", now), mqttCommand(t, "m2", "d2", now)})
	}()
	// The writer has met the lock once it logs (a retry, or the batch lost).
	waitFor(t, func() bool { return logs.String() != "" })
	// The fault lasts 1.5 s more (its length, not a wait for a state).
	time.Sleep(1500 * time.Millisecond)
	release()
	<-applied
	if n, w := count(c.m.dbErrors), count(c.m.writeErrors); n != 0 || w != 0 {
		t.Errorf("db_error %d, write_error %d; want 0, 0", n, w)
	}
	for _, id := range []string{"m1", "m2"} {
		if got, err := c.Get(ctx, id); err != nil || got.Status != StatusPending {
			t.Errorf("%s after the fault: %+v, %v", id, got, err)
		}
		if _, open := c.OpenFor(id); !open {
			t.Errorf("%s is not open", id)
		}
	}
	if out := logs.String(); strings.Contains(out, "level=ERROR") {
		t.Errorf("an error logged:\n%s", out)
	}
}

// TestCommandsWriteRetriesLostConnection: PostgreSQL ends the writer's
// connection midway through a batch: the batch is written again on
// another connection, and no change is lost.
func TestCommandsWriteRetriesLostConnection(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL only: SQLite has no connection to lose")
	}
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	c := openLoggedCommands(t, db, &testlog.Buffer{})
	api, err := c.Create(ctx, NewCommand{DeviceID: "d2", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	killOnce(t, db, "commands")
	now := time.Now().UTC()
	applyBatch(t, c, []commandOp{
		mqttCommand(t, "m1", "d1", now),
		{kind: 'r', id: api.ID, device: "d2", ok: true, at: now},
		{kind: 'd', id: "m1", device: "d1", at: now},
	})
	for id, want := range map[string]string{"m1": StatusDelivered, api.ID: StatusSucceeded} {
		if got, err := c.Get(ctx, id); err != nil || got.Status != want {
			t.Errorf("%s: %+v, %v; want %s", id, got, err, want)
		}
	}
	if n, w := count(c.m.dbErrors), count(c.m.writeErrors); n != 0 || w != 0 {
		t.Errorf("db_error %d, write_error %d; want 0, 0", n, w)
	}
}
