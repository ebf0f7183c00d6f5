package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testlog"
)

// openTestDB opens a fresh database (openBackendDB) with a registry
// holding the devices ids.
func openTestDB(t *testing.T, ids ...string) *DB {
	t.Helper()
	db := openBackendDB(t)
	reg, err := OpenRegistry(context.Background(), db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	for _, id := range ids {
		if _, _, err := reg.CreateDevice(context.Background(), NewDevice{ID: id, Name: id}); err != nil {
			t.Fatal(err)
		}
	}
	testRegistries.Store(db, reg)
	t.Cleanup(func() { testRegistries.Delete(db) })
	return db
}

// testRegistries holds the registry openTestDB opened on each database.
var testRegistries sync.Map // *DB → *Registry

// testRegistry returns the registry openTestDB opened on db.
func testRegistry(t testing.TB, db *DB) *Registry {
	t.Helper()
	r, ok := testRegistries.Load(db)
	if !ok {
		t.Fatal("no registry on this database (openTestDB)")
	}
	return r.(*Registry)
}

// openTestTelemetry opens the telemetry store on db, keeping last values
// in db's registry unless o says where.
func openTestTelemetry(t *testing.T, db *DB, o *TelemetryOptions) *Telemetry {
	t.Helper()
	var opts TelemetryOptions
	if o != nil {
		opts = *o
	}
	if opts.LastValues == nil {
		opts.LastValues = testRegistry(t, db)
	}
	tel, err := OpenTelemetry(context.Background(), db, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Close() })
	return tel
}

func mustSample(t *testing.T, s string) Sample {
	t.Helper()
	v, err := ParseTelemetry([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTelemetryStoreAndQuery(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	now := time.Now()
	for i := range 10 {
		s := mustSample(t, `{"temp":`+jsonString(float64(20+i))+`,"on":true,"ts":`+jsonString(float64(base.Add(time.Duration(i)*10*time.Second).UnixMilli()))+`}`)
		if !tel.Add("d1", s, now) {
			t.Fatal("Add refused")
		}
	}
	tel.Add("d1", mustSample(t, `{"hum":40}`), now) // no ts: arrival time
	tel.Add("d2", mustSample(t, `{"temp":5}`), now)
	tel.Add("ghost", mustSample(t, `{"temp":5}`), now) // not registered: history only
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if stored, dropped := tel.Stats(); stored != 13 || dropped != 0 {
		t.Fatalf("stored %d dropped %d", stored, dropped)
	}

	for _, tc := range []struct {
		name     string
		from, to time.Time
		limit    int
		want     []float64
	}{
		{"all", base, base.Add(time.Hour), 100, []float64{20, 21, 22, 23, 24, 25, 26, 27, 28, 29}},
		{"limit", base, base.Add(time.Hour), 3, []float64{20, 21, 22}},
		{"range inclusive", base.Add(20 * time.Second), base.Add(40 * time.Second), 100, []float64{22, 23, 24}},
		{"empty", base.Add(-time.Hour), base.Add(-time.Minute), 100, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pts, err := tel.Points(ctx, "d1", tc.from, tc.to, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(pts) != len(tc.want) {
				t.Fatalf("got %d points, want %d", len(pts), len(tc.want))
			}
			for i, p := range pts {
				if p.Values["temp"] != tc.want[i] || p.Values["on"] != true {
					t.Errorf("point %d = %v, want temp %v", i, p.Values, tc.want[i])
				}
				if i > 0 && p.TS.Before(pts[i-1].TS) {
					t.Errorf("not in time order")
				}
			}
		})
	}

	bs, err := tel.Buckets(ctx, "d1", base, base.Add(time.Hour), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 {
		t.Fatalf("buckets = %+v", bs)
	}
	if b := bs[0]; !b.TS.Equal(base) || b.Min["temp"] != 20 || b.Max["temp"] != 25 || b.Avg["temp"] != 22.5 {
		t.Errorf("bucket 0 = %+v", b)
	}
	if b := bs[1]; b.Min["temp"] != 26 || b.Max["temp"] != 29 {
		t.Errorf("bucket 1 = %+v", b)
	}
	var typ string
	q, want := `SELECT DISTINCT typeof(data) FROM telemetry_chunks`, "blob"
	if db.Dialect == database.Postgres {
		q, want = `SELECT DISTINCT pg_typeof(data)::text FROM telemetry_chunks`, "bytea"
	}
	if err := db.R.QueryRow(q).Scan(&typ); err != nil || typ != want {
		t.Errorf("points stored as %s (%v), want %s", typ, err, want)
	}
	if _, ok := bs[0].Min["on"]; ok {
		t.Errorf("booleans aggregated: %+v", bs[0])
	}

	var lastValues, lastSeen string
	if err := db.R.QueryRow(`SELECT last_values, COALESCE(last_seen,'') FROM devices WHERE id = 'd1'`).Scan(&lastValues, &lastSeen); err != nil {
		t.Fatal(err)
	}
	var lv map[string]any
	if err := json.Unmarshal([]byte(lastValues), &lv); err != nil {
		t.Fatal(err)
	}
	if lv["temp"] != 29.0 || lv["hum"] != 40.0 || lv["on"] != true || lastSeen == "" {
		t.Errorf("last values %v, last seen %q", lv, lastSeen)
	}

	for _, bad := range []struct {
		limit int
		step  time.Duration
	}{{0, 0}, {MaxTelemetryPoints + 1, 0}} {
		if _, err := tel.Points(ctx, "d1", base, base.Add(time.Hour), bad.limit); err == nil {
			t.Errorf("limit %d accepted", bad.limit)
		}
	}
	if _, err := tel.Buckets(ctx, "d1", base, base.Add(365*24*time.Hour), time.Second); err == nil {
		t.Error("too many buckets accepted")
	}
}

// TestTelemetryChunks: points written in several batches, out of order,
// some far apart in time, come back in time order and within limit.
func TestTelemetryChunks(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(mins ...int) {
		for _, m := range mins {
			s := mustSample(t, `{"m":`+jsonString(float64(m))+`}`)
			s.TS = base.Add(time.Duration(m) * time.Minute)
			tel.Add("d1", s, time.Now())
		}
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	add(100, 101, 102, 30, 31)      // two chunks: 30-31 and 100-102
	add(50, 51, 52, 53)             // one chunk
	add(32, 33, 200, 201, 202, 203) // 32-33 (interleaves the first) and 200-203
	for _, tc := range []struct {
		from, to, limit int
		want            []int
	}{
		{0, 1000, 100, []int{30, 31, 32, 33, 50, 51, 52, 53, 100, 101, 102, 200, 201, 202, 203}},
		{0, 1000, 5, []int{30, 31, 32, 33, 50}},
		{31, 51, 100, []int{31, 32, 33, 50, 51}},
		{101, 201, 3, []int{101, 102, 200}},
		{103, 199, 10, nil},
	} {
		pts, err := tel.Points(ctx, "d1", base.Add(time.Duration(tc.from)*time.Minute), base.Add(time.Duration(tc.to)*time.Minute), tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, p := range pts {
			got = append(got, int(p.Values["m"].(float64)))
			if !p.TS.Equal(base.Add(time.Duration(got[len(got)-1]) * time.Minute)) {
				t.Errorf("point %v at %v", p.Values, p.TS)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("[%d,%d] limit %d: got %v, want %v", tc.from, tc.to, tc.limit, got, tc.want)
		}
	}
	bs, err := tel.Buckets(ctx, "d1", base, base.Add(1000*time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 3 || bs[0].Min["m"] != 30 || bs[0].Max["m"] != 53 || bs[1].Avg["m"] != 101 || bs[2].Max["m"] != 203 {
		t.Errorf("buckets %+v", bs)
	}
}

func jsonString(f float64) string { b, _ := json.Marshal(f); return string(b) }

// TestTelemetryQueueFull holds the writer's connection so that the queue
// fills: Add must return at once, and the overflow is counted.
func TestTelemetryQueueFull(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: 10 * time.Millisecond, QueueSize: 8, BatchSize: 4})
	tx, err := db.W.BeginTx(ctx, nil) // the only writer connection
	if err != nil {
		t.Fatal(err)
	}
	s := mustSample(t, `{"v":1}`)
	start := time.Now()
	for range 1000 {
		tel.Add("d1", s, time.Now())
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("1000 Adds took %v: Add blocks", d)
	}
	if _, dropped := tel.Stats(); dropped < 1000-8-4-1 {
		t.Fatalf("dropped %d", dropped)
	}
	tx.Rollback()
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stored, dropped := tel.Stats()
	if stored+dropped != 1000 {
		t.Fatalf("stored %d + dropped %d != 1000", stored, dropped)
	}
}

func TestTelemetryPrune(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{PruneChunk: 7})
	now := time.Now()
	old := now.Add(-48 * time.Hour)
	for i := range 50 {
		s := mustSample(t, `{"v":1}`)
		s.TS = old.Add(time.Duration(i) * time.Second)
		tel.Add("d1", s, now)
		s.TS = now.Add(-time.Duration(i) * time.Second)
		tel.Add("d1", s, now)
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := tel.PruneBefore(ctx, now.Add(-24*time.Hour))
	if err != nil || n != 50 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	pts, err := tel.Points(ctx, "d1", old.Add(-time.Hour), now.Add(time.Hour), 1000)
	if err != nil || len(pts) != 50 {
		t.Fatalf("left %d points, %v", len(pts), err)
	}
}

// TestTelemetryPruneKeepsNewerChunks: an expired chunk of a format this
// release does not know (a newer release wrote it: a cluster half way
// through an upgrade) is left as it is, byte for byte, for a node that
// reads it, and said once; the pruner reads on past it (PruneChunk rows
// at a time) and prunes the other devices' chunks around it into their
// minute rollups, and a second pass ends too. A chunk that does not
// decode at all still goes. Before, the newer chunk was deleted with no
// rollup: its points lost.
func TestTelemetryPruneKeepsNewerChunks(t *testing.T) {
	ctx := context.Background()
	ids := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	db := openTestDB(t, ids...)
	var logs testlog.Buffer
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour, PruneChunk: 2, PruneInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	now := time.Now()
	old := now.Add(-48 * time.Hour)
	for _, id := range ids {
		for i := range 10 {
			s := mustSample(t, `{"v":1}`)
			s.TS = old.Add(time.Duration(i) * time.Second)
			tel.Add(id, s, now)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	chunk := func(id string) (int64, []byte) {
		t.Helper()
		var row int64
		var data []byte
		if err := db.R.QueryRowContext(ctx, `SELECT id, data FROM telemetry_chunks WHERE device_id = ?`, id).Scan(&row, &data); err != nil {
			t.Fatalf("%s's chunk: %v", id, err)
		}
		return row, data
	}
	set := func(row int64, data []byte) {
		t.Helper()
		if _, err := db.W.ExecContext(ctx, `UPDATE telemetry_chunks SET data = ? WHERE id = ?`, data, row); err != nil {
			t.Fatal(err)
		}
	}
	newerRow, data := chunk("n3")
	newer := append([]byte{chunkVersion + 1}, data[1:]...)
	set(newerRow, newer)
	badRow, data := chunk("n5")
	set(badRow, append([]byte{0}, data[1:]...))

	n, err := tel.PruneBefore(ctx, now.Add(-24*time.Hour))
	if err != nil || n != 40 { // n1, n2, n4, n6; n5's did not decode
		t.Fatalf("pruned %d points, %v; want 40", n, err)
	}
	if _, got := chunk("n3"); !bytes.Equal(got, newer) {
		t.Fatal("the newer release's chunk changed")
	}
	var left int
	if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM telemetry_chunks`).Scan(&left); err != nil || left != 1 {
		t.Fatalf("%d chunks left, %v; want only n3's", left, err)
	}
	for _, id := range []string{"n1", "n2", "n4", "n6"} {
		var minutes int
		if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM telemetry_1m WHERE device_id = ?`, id).Scan(&minutes); err != nil || minutes == 0 {
			t.Fatalf("%s: %d minute rollups, %v", id, minutes, err)
		}
	}
	if !strings.Contains(logs.String(), "written by a newer release") || !strings.Contains(logs.String(), "chunks=1") {
		t.Fatalf("log does not say a newer release's chunk was left:\n%s", logs.String())
	}
	if n, err := tel.PruneBefore(ctx, now.Add(-24*time.Hour)); err != nil || n != 0 {
		t.Fatalf("second pass: pruned %d, %v", n, err)
	}
	_, err = tel.Points(ctx, "n3", old.Add(-time.Hour), now, 100)
	if !errors.Is(err, errChunkNewer) {
		t.Fatalf("a query over the newer chunk: %v; want errChunkNewer", err)
	}
}

func TestTelemetryCloseFlushes(t *testing.T) {
	db := openTestDB(t, "d1")
	tel, err := OpenTelemetry(context.Background(), db, &TelemetryOptions{FlushInterval: time.Hour, LastValues: testRegistry(t, db)})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		tel.Add("d1", mustSample(t, `{"v":2}`), time.Now())
	}
	tel.Close()
	tel.Close() // idempotent
	if tel.Add("d1", mustSample(t, `{"v":2}`), time.Now()) {
		t.Fatal("Add after Close accepted")
	}
	var n int
	if err := db.R.QueryRow(`SELECT sum(n) FROM telemetry_chunks`).Scan(&n); err != nil || n != 100 {
		t.Fatalf("%d rows after Close, %v", n, err)
	}
}

// TestTelemetryChunksRecycled: two devices write many chunks each over
// many writes (the arrays of a chunk written complete serve the next
// one), with metrics that come and go, strings, booleans, numbers of
// every kind and points out of time order: every point reads back as
// sent.
func TestTelemetryChunksRecycled(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "r1", "r2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = 5000
	val := func(dev, i int) string {
		switch {
		case i%97 == 0:
			return fmt.Sprintf(`{"big":%d,"tiny":1e-300,"neg":-0}`, int64(1)<<60+int64(i))
		case i%13 == 0:
			return fmt.Sprintf(`{"mode":"m%d","on":%v}`, i%3, i%2 == 0)
		case dev == 1 && i%5 == 0:
			return fmt.Sprintf(`{"t":%d.25,"extra%d":%d}`, i, i%4, i)
		}
		return fmt.Sprintf(`{"t":%d.5,"h":%d,"on":true}`, i%40, i%7)
	}
	// Point i of each device is at minute i; they are sent in blocks of
	// 700, each block's points reversed, a write after each block.
	for start := 0; start < n; start += 700 {
		for i := min(start+700, n) - 1; i >= start; i-- {
			for dev := range 2 {
				s := mustSample(t, val(dev, i))
				s.TS = base.Add(time.Duration(i) * time.Second)
				if !tel.Add(fmt.Sprintf("r%d", dev+1), s, time.Now()) {
					t.Fatal("Add refused")
				}
			}
		}
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for dev := range 2 {
		pts, err := tel.Points(ctx, fmt.Sprintf("r%d", dev+1), base, base.Add(n*time.Second), 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != n {
			t.Fatalf("r%d: %d points, want %d", dev+1, len(pts), n)
		}
		for i, p := range pts {
			want := mustSample(t, val(dev, i)).Values()
			if !p.TS.Equal(base.Add(time.Duration(i)*time.Second)) || fmt.Sprint(p.Values) != fmt.Sprint(want) {
				t.Fatalf("r%d point %d: %v %v, want %v", dev+1, i, p.TS, p.Values, want)
			}
		}
	}
}

// TestTelemetryFlushUnderLoad: while publishers keep the queue busy
// (a small queue, points offered as fast as Add takes them), Flush
// returns, and Close writes every point Add accepted.
func TestTelemetryFlushUnderLoad(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2", "d3")
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{FlushInterval: time.Hour, QueueSize: 512, LastValues: testRegistry(t, db)})
	if err != nil {
		t.Fatal(err)
	}
	s := mustSample(t, `{"v":1,"on":true}`)
	var accepted atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if tel.Add(fmt.Sprintf("d%d", i+1), s, time.Now()) {
					accepted.Add(1)
				}
			}
		}()
	}
	// Under load: the publishers are adding (a loaded machine may not
	// have run them yet).
	for deadline := time.Now().Add(10 * time.Second); accepted.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			tel.Close()
			t.Fatal("no point accepted in 10 s")
		}
	}
	for range 3 {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := tel.Flush(fctx)
		cancel()
		if err != nil {
			close(stop)
			wg.Wait()
			tel.Close()
			t.Fatalf("Flush under load: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	tel.Close()
	var n int64
	if err := db.R.QueryRow(`SELECT COALESCE(sum(n), 0) FROM telemetry_chunks`).Scan(&n); err != nil || n != accepted.Load() || n == 0 {
		t.Fatalf("%d points stored, %d accepted, %v", n, accepted.Load(), err)
	}
	if stored, _ := tel.Stats(); stored != n {
		t.Fatalf("Stats says %d stored, the table %d", stored, n)
	}
}

// TestTelemetryPointsPaged: a query gives its first points out before it
// has decoded every chunk up to its limit (2,400 points of 255 long
// metrics, in about 400 chunks decoded to about 49 MB: all of it was held
// before the first point went out, when a viewer's answer stops at 32
// MiB; 10,000 such points, 200 MB), and
// the pages together give every point once, in time order, points of one
// millisecond across pages included.
func TestTelemetryPointsPaged(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "w")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	const n = 2400
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	var b strings.Builder
	for i := range n {
		b.Reset()
		fmt.Fprintf(&b, `{"i":%d`, i)
		for k := range 255 {
			fmt.Fprintf(&b, `,"m%03d_%s":"%s"`, k, strings.Repeat("n", 95), strings.Repeat("v", 130))
		}
		b.WriteString("}")
		s := mustSample(t, b.String())
		s.TS = base.Add(time.Duration(i/2) * time.Millisecond) // two points a millisecond
		if !tel.Add("w", s, time.Now()) {
			t.Fatalf("point %d refused", i)
		}
		if i%100 == 99 {
			if err := tel.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	var rows int
	if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_chunks WHERE device_id = 'w'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	var before, first runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var got []int
	last := time.Time{}
	err := tel.EachPoint(ctx, "w", base, base.Add(time.Hour), MaxTelemetryPoints, func(p Point) error {
		if got == nil {
			runtime.GC()
			runtime.ReadMemStats(&first)
		}
		if p.TS.Before(last) {
			t.Fatalf("point %v after %v", p.TS, last)
		}
		last = p.TS
		got = append(got, int(p.Values["i"].(float64)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if i >= len(got) || got[i] != i {
			t.Fatalf("%d points; at %d: want point %d, got %v", len(got), i, i, got[i:min(i+3, len(got))])
		}
	}
	if len(got) != n {
		t.Fatalf("%d points, want %d", len(got), n)
	}
	held := int64(first.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d chunk rows; live heap when the first point went out: +%d bytes", rows, held)
	if held > 24<<20 {
		t.Errorf("the first point went out with %d more bytes live: the query decoded (nearly) every chunk first", held)
	}
}
