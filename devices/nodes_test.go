package devices

// Tests of two nodes' stores on one PostgreSQL database (the second pass
// of TestMain).

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestTelemetryPruneTwoNodes: on PostgreSQL two nodes' pruners run at
// once over the same expired history: every point is pruned once and
// counted once in the minute rollups.
func TestTelemetryPruneTwoNodes(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL pass only")
	}
	ctx := context.Background()
	db := openTestDB(t, "d1")
	a := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour, PruneChunk: 2, PruneInterval: time.Hour})
	b := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour, PruneChunk: 2, PruneInterval: time.Hour})
	now := time.Now()
	base := now.Add(-48 * time.Hour).Truncate(time.Hour)
	const n = 3 * 360
	for i := range n {
		s := mustSample(t, fmt.Sprintf(`{"v":%d}`, i%37))
		s.TS = base.Add(time.Duration(i) * 10 * time.Second)
		if !a.Add("d1", s, now) {
			t.Fatal("Add refused")
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	pruned := make([]int64, 2)
	for i, tel := range []*Telemetry{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if pruned[i], err = tel.PruneBefore(ctx, now.Add(-24*time.Hour)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if pruned[0]+pruned[1] != n {
		t.Fatalf("pruned %d + %d points, want %d", pruned[0], pruned[1], n)
	}
	bs, err := a.Buckets(ctx, "d1", base, base.Add(3*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, bk := range bs {
		total += bk.Count["v"]
	}
	if total != n {
		t.Fatalf("the minute rollups count %d points, want %d", total, n)
	}
}

// TestTwinsTwoNodesNoLockCycles: two nodes' twin writers merge reported
// patches of the same devices, one in ascending and one in descending
// order, at once: every patch is merged (no transaction is lost to a
// deadlock between them).
func TestTwinsTwoNodesNoLockCycles(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL pass only")
	}
	ctx := context.Background()
	const devs, rounds = 20, 40
	ids := make([]string, devs)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%02d", i)
	}
	db := openTestDB(t, ids...)
	nodes := make([]*Twins, 2)
	for i := range nodes {
		tw, err := OpenTwins(ctx, db, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tw.Close() })
		nodes[i] = tw
	}
	var wg sync.WaitGroup
	for n, tw := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				for i := range devs {
					id := ids[i]
					if n == 1 {
						id = ids[devs-1-i]
					}
					if !tw.RecordReported(id, fmt.Appendf(nil, `{"n%d":%d}`, n, r)) {
						t.Error("patch refused")
					}
				}
			}
			if err := tw.Flush(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		tw, err := nodes[0].Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if tw.ReportedVersion != 2*rounds || tw.Reported["n0"] != float64(rounds-1) || tw.Reported["n1"] != float64(rounds-1) {
			t.Fatalf("%s: version %d, reported %v; want %d and both nodes' last patches", id, tw.ReportedVersion, tw.Reported, 2*rounds)
		}
	}
}
