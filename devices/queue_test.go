package devices

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// bigObject is a JSON object of about n bytes.
func bigObject(n int) []byte {
	return []byte(fmt.Sprintf(`{"blob":%q}`, strings.Repeat("b", n)))
}

// TestTwinsQueueBytes: with the writer held, reported patches stop being
// queued once QueueBytes wait; RecordReported never blocks; what was
// queued is merged once the writer is free.
func TestTwinsQueueBytes(t *testing.T) {
	sqliteOnly(t, "holds SQLite's one writer connection")
	ctx := context.Background()
	db := openTestDB(t)
	const queueBytes = 1 << 20
	tw, err := OpenTwins(ctx, db, &TwinsOptions{QueueBytes: queueBytes})
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Close()
	tx, err := db.W.BeginTx(ctx, nil) // the only writer connection
	if err != nil {
		t.Fatal(err)
	}
	patch := bigObject(60 << 10)
	queued := 0
	for range 100 {
		if tw.RecordReported("d1", patch) {
			queued++
		}
	}
	if queued > queueBytes/len(patch) || queued == 0 {
		t.Fatalf("queued %d patches of %d bytes with a bound of %d bytes", queued, len(patch), queueBytes)
	}
	if _, dropped, _ := tw.Stats(); dropped != int64(100-queued) {
		t.Fatalf("dropped %d, want %d", dropped, 100-queued)
	}
	tx.Rollback()
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := tw.Get(ctx, "d1")
	if err != nil || got.ReportedVersion != int64(queued) {
		t.Fatalf("reported version %d, want %d (%v)", got.ReportedVersion, queued, err)
	}
	if held := tw.budget.held(); held != 0 {
		t.Fatalf("the budget still holds %d bytes", held)
	}
}

// TestCommandsQueueBytes: the same for command updates from devices.
func TestCommandsQueueBytes(t *testing.T) {
	sqliteOnly(t, "holds SQLite's one writer connection")
	ctx := context.Background()
	db := openTestDB(t)
	const queueBytes = 1 << 20
	c, err := OpenCommands(ctx, db, &CommandsOptions{QueueBytes: queueBytes, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.W.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	result := bigObject(60 << 10)
	for i := range 100 {
		c.RecordResponse(fmt.Sprintf("cmd-%d", i), "d1", true, result, "")
	}
	dropped := count(c.m.dropped)
	if queued := 100 - dropped; queued > int64(queueBytes/len(result)) || queued == 0 {
		t.Fatalf("queued %d responses of %d bytes with a bound of %d bytes", queued, len(result), queueBytes)
	}
	tx.Rollback()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := count(c.m.unknownResponses); n != 100-dropped {
		t.Fatalf("%d responses written, want %d", n, 100-dropped)
	}
	if held := c.budget.held(); held != 0 {
		t.Fatalf("the budget still holds %d bytes", held)
	}
}
