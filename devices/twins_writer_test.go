package devices

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testlog"
)

// TestTwinsWriteIsolatesFailingPatch: a batch holding a patch the
// database refuses (one that never passed CheckTwinPatch, written in
// package) keeps every other patch of the batch, each device's in order;
// only the refused ones are dropped, counted as errors and logged once a
// minute per device, without the payload.
func TestTwinsWriteIsolatesFailingPatch(t *testing.T) {
	bad := map[string][]byte{
		// Not JSON: both dialects' json_patch refuse it.
		"not JSON": []byte(`{"SECRETPAYLOAD":`),
	}
	if testPG == nil {
		// What a device could send before MaxTwinDepth: SQLite's JSON
		// functions stop at 1,000 levels.
		bad["past SQLite's depth"] = []byte(`{"SECRETPAYLOAD":` + string(deepPatch(1001)) + `}`)
	} else {
		// PostgreSQL's text (and so jsonb) holds no NUL character.
		bad["NUL"] = []byte(`{"SECRETPAYLOAD":"\u0000"}`)
	}
	for name, patch := range bad {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			var logs testlog.Buffer
			tw, err := OpenTwins(ctx, openTestDB(t), &TwinsOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer tw.Close()
			// In the batch's order; PostgreSQL sorts by device, keeping
			// each device's order.
			batch := []twinPatch{
				{device: "d1", patch: []byte(`{"n":1,"keep":true}`)},
				{device: "d3", patch: []byte(`{"n":1}`)},
				{device: "bad", patch: []byte(`{"ok":1}`)},
				{device: "bad", patch: patch},
				{device: "d1", patch: []byte(`{"n":2}`)},
				{device: "bad", patch: []byte(`{"ok":2}`)},
				{device: "bad", patch: patch},
				{device: "d3", patch: []byte(`{"n":2}`)},
			}
			write := func(batch []twinPatch) {
				for i := range batch {
					if !tw.budget.take(batch[i].cost()) {
						t.Fatal("queue budget full")
					}
				}
				tw.write(batch) // as the writer goroutine, idle: nothing is queued
			}
			write(batch)
			for dev, want := range map[string]Twin{
				"d1":  {Reported: map[string]any{"n": 2.0, "keep": true}, ReportedVersion: 2},
				"d3":  {Reported: map[string]any{"n": 2.0}, ReportedVersion: 2},
				"bad": {Reported: map[string]any{"ok": 2.0}, ReportedVersion: 2},
			} {
				got, err := tw.Get(ctx, dev)
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := json.Marshal(got.Reported); got.ReportedVersion != want.ReportedVersion || string(b) != mustJSON(t, want.Reported) {
					t.Errorf("%s: reported %s version %d, want %s version %d", dev, b, got.ReportedVersion, mustJSON(t, want.Reported), want.ReportedVersion)
				}
			}
			if merged := count(tw.merged); merged != 6 {
				t.Errorf("merged %d, want 6", merged)
			}
			if errs := count(tw.writeErrors); errs != 2 {
				t.Errorf("errors %d, want 2", errs)
			}
			// Again: counted, not logged again within the minute.
			write([]twinPatch{{device: "bad", patch: patch}, {device: "d1", patch: []byte(`{"n":3}`)}})
			if got, err := tw.Get(ctx, "d1"); err != nil || got.ReportedVersion != 3 {
				t.Errorf("d1 after the second batch: %+v, %v", got, err)
			}
			if errs := count(tw.writeErrors); errs != 3 {
				t.Errorf("errors %d, want 3", errs)
			}
			out := logs.String()
			if n := strings.Count(out, "device=bad"); n != 1 {
				t.Errorf("the failing device was logged %d times, want once a minute:\n%s", n, out)
			}
			if strings.Contains(out, "SECRETPAYLOAD") {
				t.Errorf("payload in the log:\n%s", out)
			}
			if strings.Contains(out, "level=ERROR") || strings.Contains(out, "device=d") {
				t.Errorf("other devices' patches logged as failed:\n%s", out)
			}
			if held := tw.budget.held(); held != 0 {
				t.Errorf("the budget still holds %d bytes", held)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTwinsWriteRidesOutShortFault: the database is locked by another
// connection for a while (SQLITE_BUSY, PostgreSQL's lock_not_available)
// and then no longer: the reported patches that met the lock are merged
// once it is gone, in order, none counted as failed. (Before, the batch
// was lost at the first fault.)
func TestTwinsWriteRidesOutShortFault(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	var logs testlog.Buffer
	tw, err := OpenTwins(ctx, db, &TwinsOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	release := holdWrites(t, db, "twins")
	for _, p := range []string{`{"n":1,"keep":true}`, `{"n":2}`} {
		if !tw.RecordReported("d1", []byte(p)) {
			t.Fatal("patch not queued")
		}
	}
	// The writer has met the lock once it logs (a retry, or the batch lost).
	waitFor(t, func() bool { return logs.String() != "" })
	// The fault lasts 1.5 s more (its length, not a wait for a state).
	time.Sleep(1500 * time.Millisecond)
	release()
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := tw.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(got.Reported); string(b) != `{"keep":true,"n":2}` || got.ReportedVersion != 2 {
		t.Errorf("reported %s version %d; want {\"keep\":true,\"n\":2} version 2", b, got.ReportedVersion)
	}
	if errs := count(tw.writeErrors); errs != 0 {
		t.Errorf("errors %d, want 0", errs)
	}
	if out := logs.String(); !strings.Contains(out, "twins: batch written after a fault of the database") || strings.Contains(out, "level=ERROR") {
		t.Errorf("want the retry and its success logged, no error:\n%s", out)
	}
}
