package devices

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tether-iot/tether/internal/testmqtt"
)

func openTestCommands(t *testing.T) *Commands {
	t.Helper()
	db := openTestDB(t, "d1", "d2") // a command over MQTT is recorded for a device only
	c, err := OpenCommands(context.Background(), db, &CommandsOptions{SweepInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestCommandDeliveredOnlyToItsDevice: a delivery recorded for another
// device than the command's leaves it pending (the broker records
// commands its store does not know yet, by their topic).
func TestCommandDeliveredOnlyToItsDevice(t *testing.T) {
	ctx := context.Background()
	c := openTestCommands(t)
	cmd, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "reboot", Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mark, err := c.Create(ctx, NewCommand{DeviceID: "d2", Name: "reboot", Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c.RecordDelivered(cmd.ID, "d2")
	c.RecordDelivered(mark.ID, "d2") // written after the first
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		if got, err := c.Get(ctx, mark.ID); err != nil || got.Status != StatusDelivered {
			return fmt.Errorf("d2's command: %s, %v", got.Status, err)
		}
		return nil
	})
	if got, err := c.Get(ctx, cmd.ID); err != nil || got.Status != StatusPending {
		t.Fatalf("d1's command delivered to d2: %s, %v", got.Status, err)
	}
}

func TestCommandLifecycle(t *testing.T) {
	ctx := context.Background()
	c := openTestCommands(t)
	for _, tc := range []struct {
		name   string
		events func(id string)
		want   string
	}{
		{"succeeded", func(id string) { c.RecordDelivered(id, "d1"); c.RecordResponse(id, "d1", true, []byte(`{"x":1}`), "") }, StatusSucceeded},
		{"failed without delivery", func(id string) { c.RecordResponse(id, "d1", false, nil, "boom") }, StatusFailed},
		{"only forward", func(id string) {
			c.RecordResponse(id, "d1", true, nil, "")
			c.RecordDelivered(id, "d1")                // ignored: succeeded is final
			c.RecordResponse(id, "d1", false, nil, "") // late
		}, StatusSucceeded},
		{"expired", func(id string) {}, StatusExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "reboot", Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if dev, ok := c.OpenFor(cmd.ID); !ok || dev != "d1" {
				t.Fatalf("not open: %q %v", dev, ok)
			}
			tc.events(cmd.ID)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			got, err := c.Wait(wctx, cmd.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.want {
				t.Fatalf("status %s, want %s", got.Status, tc.want)
			}
			if _, ok := c.OpenFor(cmd.ID); ok {
				t.Fatal("still open")
			}
		})
	}
	// An id used again over MQTT for a command that is done stays done and
	// is not left open.
	done, err := c.Create(ctx, NewCommand{ID: "reused", DeviceID: "d1", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Expire(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	c.RecordSent(&NewCommand{ID: "reused", DeviceID: "d1", Name: "wipe", Params: []byte(`{"all":true}`), Timeout: time.Minute})
	c.RecordResponse("cmd-nope", "d1", true, nil, "")
	testmqtt.CheckFor(t, 5*time.Second, func() error {
		late, unknown := c.ResponseStats()
		_, open := c.OpenFor("reused")
		if late == 1 && unknown == 1 && !open {
			return nil
		}
		return fmt.Errorf("late %d unknown %d, reused id open %v", late, unknown, open)
	})
	// The command sent with it is recorded all the same, under an id of
	// its own, failed, saying so: an operator could otherwise send any
	// command unrecorded by giving it a done command's id.
	list, _, err := c.List(ctx, "d1", 10, "")
	if err != nil {
		t.Fatal(err)
	}
	var wipe *Command
	for i := range list {
		if list[i].Name == "wipe" {
			wipe = &list[i]
		}
	}
	if wipe == nil || wipe.ID == "reused" || wipe.Status != StatusFailed || string(wipe.Params) != `{"all":true}` || !strings.Contains(wipe.Error, "reused") {
		t.Fatalf("the command sent with a done command's id: %+v in %+v", wipe, list)
	}
}

func TestCommandCheckAndList(t *testing.T) {
	ctx := context.Background()
	c := openTestCommands(t)
	for _, bad := range []NewCommand{
		{DeviceID: "d1", Name: "a/b"},
		{DeviceID: "d/1", Name: "x"},
		{DeviceID: "d1", Name: "x", Params: []byte(`[1]`)},
		{DeviceID: "d1", Name: "x", Timeout: time.Millisecond},
	} {
		var ie *InvalidError
		if _, err := c.Create(ctx, bad); !errors.As(err, &ie) {
			t.Errorf("%+v: err %v", bad, err)
		}
	}
	if _, err := c.Create(ctx, NewCommand{ID: "same", DeviceID: "d1", Name: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, NewCommand{ID: "same", DeviceID: "d1", Name: "x"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate id: %v", err)
	}
	for range 4 {
		if _, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		list, next, err := c.List(ctx, "d1", 2, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range list {
			if seen[cmd.ID] {
				t.Fatalf("%s twice", cmd.ID)
			}
			seen[cmd.ID] = true
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 5 {
		t.Fatalf("listed %d", len(seen))
	}
	if _, err := c.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
}

func TestTwinMerge(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	tw, err := OpenTwins(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	got, err := tw.PatchDesired(ctx, "d1", []byte(`{"rate":5,"mode":"eco","old":1}`))
	if err != nil || got.DesiredVersion != 1 || len(got.Delta) != 3 {
		t.Fatalf("%+v %v", got, err)
	}
	got, err = tw.PatchDesired(ctx, "d1", []byte(`{"old":null,"mode":"fast"}`))
	if err != nil || got.DesiredVersion != 2 || got.Desired["old"] != nil || got.Desired["mode"] != "fast" {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := tw.PatchDesired(ctx, "d1", []byte(`{"version":3}`)); err == nil {
		t.Fatal("version accepted")
	}
	if tw.RecordReported("d1", []byte(`[1]`)) {
		t.Fatal("array accepted")
	}
	tw.RecordReported("d1", []byte(`{"rate":5,"mode":"eco","extra":true}`))
	tw.RecordReported("d1", []byte(`{"mode":"fast","extra":null}`))
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = tw.Get(ctx, "d1")
	if err != nil || got.ReportedVersion != 2 || len(got.Delta) != 0 || got.Reported["extra"] != nil {
		t.Fatalf("%+v %v", got, err)
	}
}

// TestCommandTextBothDatabasesTake: what a device answers, and what an
// operator sends over MQTT, is stored as text both databases take:
// U+0000 in an error message (PostgreSQL's text has no NUL), invalid
// UTF-8 in a result or an error, an error cut at its limit in the middle
// of a character. One such answer failed the writer's whole batch on
// PostgreSQL: the other commands' outcomes in it were lost.
func TestCommandTextBothDatabasesTake(t *testing.T) {
	ctx := context.Background()
	c := openTestCommands(t)
	var ids []string
	for range 5 {
		cmd, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "x", Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, cmd.ID)
	}
	long := "x" + strings.Repeat("é", MaxCommandError) // cut in the middle of an é
	c.RecordResponse(ids[0], "d1", false, nil, "disk\x00full")
	c.RecordResponse(ids[1], "d1", true, []byte("{\"x\":\"\xff\"}"), "")
	c.RecordResponse(ids[2], "d1", false, nil, "bad \xc3 byte")
	c.RecordResponse(ids[3], "d1", false, nil, long)
	c.RecordResponse(ids[4], "d1", true, []byte(`{"ok":1}`), "")
	// Over MQTT (the hook checks a command before RecordSent), as through
	// the API (Create).
	bad := NewCommand{ID: "mqtt-1", DeviceID: "d2", Name: "x", Params: []byte("{\"p\":\"\xfe\"}"), Timeout: time.Minute}
	var inv *InvalidError
	if err := bad.Check(); !errors.As(err, &inv) {
		t.Errorf("params with invalid UTF-8: Check says %v", err)
	}
	if _, err := c.Create(ctx, bad); !errors.As(err, &inv) {
		t.Errorf("params with invalid UTF-8: Create says %v", err)
	}
	want := []string{StatusFailed, StatusFailed, StatusFailed, StatusFailed, StatusSucceeded}
	for i, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := c.Wait(wctx, id)
		cancel()
		if err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		if got.Status != want[i] {
			t.Errorf("command %d: %s (%q), want %s", i, got.Status, got.Error, want[i])
		}
		if !utf8.ValidString(got.Error) || strings.ContainsRune(got.Error, 0) || len(got.Error) > MaxCommandError {
			t.Errorf("command %d: error %q stored", i, got.Error)
		}
		if !utf8.Valid(got.Result) {
			t.Errorf("command %d: result %q stored", i, got.Result)
		}
	}
}

// TestCommandNestingBounded: params and a device's result nested deeper
// than MaxCommandDepth are refused (params: an invalid error; a result:
// dropped, the command failed, saying so), as deep as that they are
// taken. A device's result nested 10,000 deep overflowed the dashboard's
// stack and left the device's command history empty for everyone.
func TestCommandNestingBounded(t *testing.T) {
	ctx := context.Background()
	c := openTestCommands(t)
	nested := func(depth int) []byte { // {"a": [[...]]}, depth levels in all
		return []byte(`{"a":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`)
	}
	var inv *InvalidError
	if _, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "x", Params: nested(MaxCommandDepth + 1)}); !errors.As(err, &inv) {
		t.Errorf("params %d deep: Create says %v", MaxCommandDepth+1, err)
	}
	if _, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "x", Params: nested(MaxCommandDepth)}); err != nil {
		t.Errorf("params %d deep: %v", MaxCommandDepth, err)
	}
	for _, tc := range []struct {
		depth      int
		ok         bool
		errMsg     string
		wantStatus string
		wantError  string
	}{
		{10000, true, "", StatusFailed, fmt.Sprintf("result nested deeper than %d levels", MaxCommandDepth)},
		{MaxCommandDepth + 1, true, "", StatusFailed, fmt.Sprintf("result nested deeper than %d levels", MaxCommandDepth)},
		{MaxCommandDepth + 1, false, "sensor gone", StatusFailed, "sensor gone"},
		{MaxCommandDepth, true, "", StatusSucceeded, ""},
	} {
		cmd, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "x", Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		c.RecordResponse(cmd.ID, "d1", tc.ok, nested(tc.depth), tc.errMsg)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := c.Wait(wctx, cmd.ID)
		cancel()
		if err != nil {
			t.Fatalf("result %d deep: %v", tc.depth, err)
		}
		if got.Status != tc.wantStatus || got.Error != tc.wantError {
			t.Errorf("result %d deep, ok %v: %s %q, want %s %q", tc.depth, tc.ok, got.Status, got.Error, tc.wantStatus, tc.wantError)
		}
		if kept := got.Result != nil; kept != (tc.depth <= MaxCommandDepth) {
			t.Errorf("result %d deep: kept %v (%.40s)", tc.depth, kept, got.Result)
		}
	}
}

// TestCommandsPerDeviceBound: past MaxPerDevice, a device's oldest
// commands are deleted within a sweep, whatever their status (these are
// all open), and are no longer open; another device's are left alone.
// Without the bound an operator's commands of 60 KiB params over MQTT
// grew the database by 20 MB/s, never pruned.
func TestCommandsPerDeviceBound(t *testing.T) {
	ctx := context.Background()
	c, err := OpenCommands(ctx, openTestDB(t, "d1", "d2"), &CommandsOptions{SweepInterval: 20 * time.Millisecond, MaxPerDevice: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Each in a millisecond of its own (times are milliseconds; ties are
	// ordered by id, as the database collates it).
	nextMilli := func(after time.Time) {
		testmqtt.CheckFor(t, 5*time.Second, func() error {
			if time.Now().UnixMilli() <= after.UnixMilli() {
				return fmt.Errorf("the clock is still at %d", after.UnixMilli())
			}
			return nil
		})
	}
	var older []Command
	for range 5 {
		cmd, err := c.Create(ctx, NewCommand{DeviceID: "d1", Name: "set", Timeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		older = append(older, cmd)
		nextMilli(cmd.CreatedAt)
	}
	other, err := c.Create(ctx, NewCommand{DeviceID: "d2", Name: "set", Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	newer := make([]NewCommand, 3)
	for i := range newer {
		newer[i] = NewCommand{DeviceID: "d1", Name: "set", Params: []byte("{}"), Timeout: time.Hour}
		if err := newer[i].Check(); err != nil {
			t.Fatal(err)
		}
		if !c.RecordSent(&newer[i]) {
			t.Fatal("queue full")
		}
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		list, _, err := c.List(ctx, "d1", 100, "")
		if err != nil {
			return err
		}
		if len(list) != 5 || count(c.m.pruned) != 3 {
			return fmt.Errorf("%d commands kept, %v pruned", len(list), count(c.m.pruned))
		}
		return nil
	})
	for i, cmd := range older {
		_, open := c.OpenFor(cmd.ID)
		if _, err := c.Get(ctx, cmd.ID); (i < 3) != errors.Is(err, ErrNotFound) || open != (i >= 3) {
			t.Errorf("command %d of 5 (oldest first): open %v, %v", i, open, err)
		}
	}
	for _, nc := range newer {
		if _, open := c.OpenFor(nc.ID); !open {
			t.Errorf("a newer command %s is not open", nc.ID)
		}
	}
	if _, err := c.Get(ctx, other.ID); err != nil {
		t.Errorf("d2's command: %v", err)
	}
}
