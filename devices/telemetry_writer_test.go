package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testlog"
)

// telemetryRun adds points to a store whose writer writes only on Flush
// (FlushInterval an hour), so that each flush is one batch, and reads
// back what is stored of each device.
type telemetryRun struct {
	t    *testing.T
	db   *DB
	tel  *Telemetry
	logs *testlog.Buffer
	base time.Time
	next map[string]int // each device's next point number
}

func newTelemetryRun(t *testing.T, devices ...string) *telemetryRun {
	t.Helper()
	db := openTestDB(t, devices...)
	r := &telemetryRun{t: t, db: db, logs: &testlog.Buffer{}, next: map[string]int{},
		base: time.Now().Truncate(time.Hour).Add(-time.Hour)}
	r.tel = openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(r.logs, nil))})
	return r
}

// batch queues n points of each device (a point of "n": k, the device's
// k-th point, and a secret string), interleaved, and flushes them.
func (r *telemetryRun) batch(n int, devices ...string) error {
	r.t.Helper()
	r.add(n, devices...)
	return r.tel.Flush(context.Background())
}

// add queues n points of each device, as batch does, without flushing.
func (r *telemetryRun) add(n int, devices ...string) {
	r.t.Helper()
	for range n {
		for _, d := range devices {
			k := r.next[d]
			r.next[d]++
			s := mustSample(r.t, `{"n":`+jsonString(float64(k))+`,"s":"SECRETVALUE"}`)
			s.TS = r.base.Add(time.Duration(k) * time.Second)
			if !r.tel.Add(d, s, time.Now()) {
				r.t.Fatal("point not queued")
			}
		}
	}
}

// stored returns the "n" of device's points, in time order.
func (r *telemetryRun) stored(device string) []int {
	r.t.Helper()
	pts, err := r.tel.Points(context.Background(), device, r.base, r.base.Add(time.Hour), 1000)
	if err != nil {
		r.t.Fatal(err)
	}
	var ns []int
	for _, p := range pts {
		ns = append(ns, int(p.Values["n"].(float64)))
	}
	return ns
}

// hourCount returns how many numbers device's hourly rollup of "n"
// counts.
func (r *telemetryRun) hourCount(device string) int64 {
	r.t.Helper()
	bs, err := r.tel.Buckets(context.Background(), device, r.base, r.base.Add(time.Hour-time.Millisecond), time.Hour)
	if err != nil {
		r.t.Fatal(err)
	}
	var n int64
	for _, b := range bs {
		n += b.Count["n"]
	}
	return n
}

// lastN returns device's last value of "n", or -1 if it has none.
func (r *telemetryRun) lastN(device string) int {
	r.t.Helper()
	var raw []byte
	if err := r.db.R.QueryRow(`SELECT COALESCE(last_values, '{}') FROM devices WHERE id = ?`, device).Scan(&raw); err != nil {
		r.t.Fatal(err)
	}
	var lv map[string]any
	if err := json.Unmarshal(raw, &lv); err != nil {
		r.t.Fatal(err)
	}
	if n, ok := lv["n"].(float64); ok {
		return int(n)
	}
	return -1
}

// check compares each device's stored points with 0..want-1, and its
// hourly rollup and last value with them.
func (r *telemetryRun) check(want map[string]int) {
	r.t.Helper()
	for d, n := range want {
		got := r.stored(d)
		ok := len(got) == n
		for i := 0; ok && i < n; i++ {
			ok = got[i] == i
		}
		if !ok {
			r.t.Errorf("%s: stored %v, want 0 to %d", d, got, n-1)
		}
		if c := r.hourCount(d); c != int64(n) {
			r.t.Errorf("%s: the hourly rollup counts %d, want %d", d, c, n)
		}
		if l := r.lastN(d); l != n-1 {
			r.t.Errorf("%s: last value %d, want %d", d, l, n-1)
		}
	}
}

// TestTelemetryWriteIsolatesFailingDevice: a batch holding a device whose
// history the database refuses (a trigger on telemetry_chunks) stores
// every other device's points, hourly rollups and last values; the
// refused device loses its points alone, all of its writes rolled back
// (no rollup, no last value), counted as db_error and logged once a
// minute without the values. Once the database takes its writes again,
// its next points are stored, and the chunks the other devices kept
// writing to are intact (a chunk row inserted in a rolled-back savepoint
// is not rewritten later: SQLite reuses its rowid for the next device's
// chunk).
func TestTelemetryWriteIsolatesFailingDevice(t *testing.T) {
	r := newTelemetryRun(t, "d1", "bad", "d2")
	allow := refuseDevice(t, r.db, "telemetry_chunks", "bad")
	if err := r.batch(3, "d1", "bad", "d2"); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 3, "d2": 3})
	if got := r.stored("bad"); len(got) != 0 {
		t.Errorf("bad: stored %v", got)
	}
	if c, l := r.hourCount("bad"), r.lastN("bad"); c != 0 || l != -1 {
		t.Errorf("bad: hourly rollup counts %d, last value %d; want nothing", c, l)
	}
	stored, _ := r.tel.Stats()
	if stored != 6 || count(r.tel.m.dbErrors) != 3 || count(r.tel.m.writeErrors) != 0 {
		t.Errorf("stored %d, db_error %d, failed batches %d; want 6, 3, 0", stored, count(r.tel.m.dbErrors), count(r.tel.m.writeErrors))
	}
	// Again: counted, not logged again within the minute.
	if err := r.batch(2, "d1", "bad", "d2"); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 5, "d2": 5})
	if n := count(r.tel.m.dbErrors); n != 5 {
		t.Errorf("db_error %d, want 5", n)
	}
	allow() // the database takes bad's writes again
	r.next["bad"] = 0
	if err := r.batch(2, "bad", "d2", "d1"); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 7, "d2": 7, "bad": 2})
	out := r.logs.String()
	if n := strings.Count(out, "device=bad"); n != 1 {
		t.Errorf("the failing device was logged %d times, want once a minute:\n%s", n, out)
	}
	if strings.Contains(out, "SECRETVALUE") {
		t.Errorf("values in the log:\n%s", out)
	}
	if strings.Contains(out, "level=ERROR") || strings.Contains(out, "device=d") {
		t.Errorf("other devices' points logged as failed:\n%s", out)
	}
}

// TestTelemetryWriteTransientFailsBatch: a fault of the database rather
// than of a device's points (every write waits on a lock held elsewhere
// until it gives up: SQLITE_BUSY, PostgreSQL's lock_not_available) and
// outlasts the writer's retries (retryFor) fails the batch as a whole, as
// any failed batch did before: no device's
// points are dropped and logged as refused one by one (each would wait
// out the lock in turn). Once the lock is gone, the next batch is stored.
func TestTelemetryWriteTransientFailsBatch(t *testing.T) {
	r := newTelemetryRun(t, "d1", "d2", "d3")
	release := holdWrites(t, r.db, "telemetry_chunks")
	if err := r.batch(2, "d1", "d2", "d3"); err == nil {
		t.Fatal("the batch was written with the database locked")
	}
	release()
	if n, b := count(r.tel.m.dbErrors), count(r.tel.m.writeErrors); n != 0 || b != 1 {
		t.Errorf("db_error %d, failed batches %d; want 0, 1", n, b)
	}
	out := r.logs.String()
	if strings.Contains(out, "device=") || strings.Count(out, "telemetry: write batch") != 1 {
		t.Errorf("want one failed batch logged, no device blamed:\n%s", out)
	}
	for d := range r.next {
		r.next[d] = 0
	}
	if err := r.batch(2, "d1", "d2", "d3"); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 2, "d2": 2, "d3": 2})
}

// TestTelemetryWriteRidesOutShortFault: the database is locked by
// another connection for a while (SQLITE_BUSY, PostgreSQL's
// lock_not_available, as in TestTelemetryWriteTransientFailsBatch), and
// then no longer: the batch that met the lock is written once it is gone,
// and the points queued meanwhile after it; nothing is lost or counted as
// failed. (Before, the batch failed on its second try and was lost.)
func TestTelemetryWriteRidesOutShortFault(t *testing.T) {
	r := newTelemetryRun(t, "d1", "d2", "d3")
	release := holdWrites(t, r.db, "telemetry_chunks")
	r.add(3, "d1", "d2", "d3")
	flushed := make(chan error, 1)
	go func() { flushed <- r.tel.Flush(context.Background()) }()
	// The writer has met the lock once it logs (a retry, or the batch lost).
	waitFor(t, func() bool { return r.logs.String() != "" })
	r.add(2, "d1", "d2", "d3") // points that come during the fault
	// The fault lasts 1.5 s more (its length, not a wait for a state).
	time.Sleep(1500 * time.Millisecond)
	release()
	if err := <-flushed; err != nil {
		t.Fatalf("the batch failed: %v", err)
	}
	if err := r.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 5, "d2": 5, "d3": 5})
	if n, b := count(r.tel.m.dbErrors), count(r.tel.m.writeErrors); n != 0 || b != 0 {
		t.Errorf("db_error %d, failed batches %d; want 0, 0", n, b)
	}
	if out := r.logs.String(); !strings.Contains(out, "telemetry: batch written after a fault of the database") || strings.Contains(out, "level=ERROR") {
		t.Errorf("want the retry and its success logged, no error:\n%s", out)
	}
}

// TestTelemetryWriteRetriesLostConnection: PostgreSQL ends the writer's
// connection midway through a batch (as a restart or a network fault
// would): the batch is written again on another connection, and nothing
// is lost.
func TestTelemetryWriteRetriesLostConnection(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL only: SQLite has no connection to lose")
	}
	r := newTelemetryRun(t, "d1", "d2", "d3")
	killOnce(t, r.db, "telemetry_chunks")
	if err := r.batch(3, "d1", "d2", "d3"); err != nil {
		t.Fatal(err)
	}
	r.check(map[string]int{"d1": 3, "d2": 3, "d3": 3})
	if n, b := count(r.tel.m.dbErrors), count(r.tel.m.writeErrors); n != 0 || b != 0 {
		t.Errorf("db_error %d, failed batches %d; want 0, 0", n, b)
	}
}

// TestTelemetryConcurrentSmallBatches: publishers of many devices add
// points at once while the writer takes them in batches far smaller than
// what waits (BatchSize 7, so a device's waiting points are often split
// between two batches) and Flush is called meanwhile: every point is
// stored once, with each device's hourly rollup and last value, nothing
// is dropped, and nothing is left counted as waiting.
func TestTelemetryConcurrentSmallBatches(t *testing.T) {
	const devs, publishers, points = 40, 8, 300
	ids := make([]string, devs)
	for i := range ids {
		ids[i] = "dev-" + strings.Repeat("x", i%3) + jsonString(float64(i))
	}
	db := openTestDB(t, ids...)
	r := &telemetryRun{t: t, db: db, next: map[string]int{}, base: time.Now().Truncate(time.Hour).Add(-time.Hour)}
	r.tel = openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: 5 * time.Millisecond, BatchSize: 7})
	done := make(chan struct{})
	for p := range publishers {
		go func() {
			defer func() { done <- struct{}{} }()
			for k := range points {
				for i := p; i < devs; i += publishers {
					s, err := ParseTelemetry([]byte(`{"n":` + jsonString(float64(k)) + `}`))
					if err != nil {
						panic(err)
					}
					s.TS = r.base.Add(time.Duration(k) * time.Second)
					if !r.tel.Add(ids[i], s, time.Now()) {
						panic("point not queued")
					}
				}
			}
		}()
	}
	flushes := 0
	for running := publishers; running > 0; {
		select {
		case <-done:
			running--
		default:
			if err := r.tel.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			flushes++
		}
	}
	if err := r.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for _, id := range ids {
		want[id] = points
	}
	r.check(want)
	if stored, dropped := r.tel.Stats(); stored != devs*points || dropped != 0 {
		t.Errorf("stored %d, dropped %d; want %d, 0", stored, dropped, devs*points)
	}
	if n := r.tel.queue.len(); n != 0 {
		t.Errorf("%d points still counted as waiting", n)
	}
	t.Logf("%d flushes while publishing", flushes)
}

// TestTelemetryTailBesideItsBase: a device's open chunk is two rows, its
// base and its tail; a tail row is inserted only while its base row is
// there, and a chunk whose base row is gone (pruned, or its device
// deleted meanwhile) is dropped: its points are not written again, and
// the device's next points start a new chunk.
func TestTelemetryTailBesideItsBase(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	add := func(i int) {
		t.Helper()
		s := mustSample(t, fmt.Sprintf(`{"v":%d}`, i))
		s.TS = base.Add(time.Duration(i) * time.Second)
		if !tel.Add("d1", s, time.Now()) {
			t.Fatal("Add refused")
		}
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() (rows, points int) {
		t.Helper()
		if err := db.R.QueryRow(`SELECT count(*), coalesce(sum(n), 0) FROM telemetry_chunks WHERE device_id = 'd1'`).Scan(&rows, &points); err != nil {
			t.Fatal(err)
		}
		return rows, points
	}
	// One point a flush: the first wholeEvery are written whole into the
	// base row (each write adds at least 1/wholeEvery of the points), the
	// next is the tail's first.
	for i := range wholeEvery {
		add(i)
	}
	if rows, points := stored(); rows != 1 || points != wholeEvery {
		t.Fatalf("%d rows, %d points; want the base row with %d", rows, points, wholeEvery)
	}
	if _, err := db.W.Exec(`DELETE FROM telemetry_chunks WHERE device_id = 'd1'`); err != nil {
		t.Fatal(err)
	}
	add(wholeEvery)
	if rows, points := stored(); rows != 0 || points != 0 {
		t.Fatalf("%d rows, %d points; want none: a tail without its base", rows, points)
	}
	add(wholeEvery + 1)
	if rows, points := stored(); rows != 1 || points != 1 {
		t.Fatalf("%d rows, %d points; want a new chunk of the point after", rows, points)
	}
	pts, err := tel.Points(ctx, "d1", base, base.Add(time.Hour), MaxTelemetryPoints)
	if err != nil || len(pts) != 1 || pts[0].Values["v"] != float64(wholeEvery+1) {
		t.Fatalf("points %v, %v; want the fourth alone", pts, err)
	}
}

// TestTelemetryManyPointsAWriteOneRow: a write that adds at least
// 1/wholeEvery of a chunk's points rewrites the whole chunk into its base
// row (no tail row, whose points would be encoded twice), and a device
// that adds a few points a write still gets a tail; either way the rows
// hold every point, and a chunk written complete is the full encoder's
// bytes.
func TestTelemetryManyPointsAWriteOneRow(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	next := map[string]int{}
	add := func(dev string, n int) {
		t.Helper()
		for range n {
			i := next[dev]
			next[dev]++
			s := mustSample(t, fmt.Sprintf(`{"v":%d.5,"s":"x%d"}`, i%50, i%3))
			s.TS = base.Add(time.Duration(i) * time.Second)
			if !tel.Add(dev, s, time.Now()) {
				t.Fatal("Add refused")
			}
		}
	}
	rows := func(dev string) (n int) {
		t.Helper()
		if err := db.R.QueryRow(`SELECT count(*) FROM telemetry_chunks WHERE device_id = ?`, dev).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for w := range 4 {
		add("d1", 100) // 100, 200, 300, 400 points: each write at least 1/wholeEvery
		add("d2", 1+w%2)
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if n := rows("d1"); n != 1 {
			t.Fatalf("write %d: d1 has %d rows, want its base alone", w+1, n)
		}
	}
	for range 40 {
		add("d2", 1)
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := rows("d2"); n != 2 {
		t.Fatalf("d2, a point a write: %d rows, want a base and a tail", n)
	}
	add("d1", 2000) // past a complete chunk
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"d1", "d2"} {
		pts, err := tel.Points(ctx, dev, base, base.Add(2*time.Hour), MaxTelemetryPoints)
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != next[dev] {
			t.Fatalf("%s: %d points, want %d", dev, len(pts), next[dev])
		}
		for i, p := range pts {
			if !p.TS.Equal(base.Add(time.Duration(i)*time.Second)) || p.Values["v"] != float64(i%50)+0.5 || p.Values["s"] != fmt.Sprintf("x%d", i%3) {
				t.Fatalf("%s point %d: %v %v", dev, i, p.TS, p.Values)
			}
		}
	}
	// d1's first chunk, written complete, is what the full encoder makes of
	// its points.
	var data []byte
	if err := db.R.QueryRow(`SELECT data FROM telemetry_chunks WHERE device_id = 'd1' ORDER BY ts_min LIMIT 1`).Scan(&data); err != nil {
		t.Fatal(err)
	}
	c, err := decodeChunk(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ts) < 400 {
		t.Fatalf("d1's first chunk: %d points, want it complete", len(c.ts))
	}
	if again := encodeChunk(nil, c); !bytes.Equal(again, data) {
		t.Fatalf("d1's first chunk: %d bytes stored, the full encoder makes %d", len(data), len(again))
	}
}

// backdatedFlood is a store (telemetry.device_values_rate's default
// bounds: 1,000 values a second, bursts of 10,000; everything else at
// its default but FlushInterval, so that a Flush is one batch) and
// devices that each queue samples of 64 numbers, the newest first, each
// stamped an hour before the last (a backfill, or a device choosing its
// timestamps to make the writer work): each point makes 64 new hourly
// rows. 8 devices of 150 samples (within a burst) make 76,800 rows, more
// than two transactions' worth (txRows).
type backdatedFlood struct {
	t      *testing.T
	db     *DB
	tel    *Telemetry
	ids    []string
	newest time.Time
	logs   *testlog.Buffer
}

const floodDevices, floodSamples, floodMetrics = 8, 150, 64

func newBackdatedFlood(t *testing.T) *backdatedFlood {
	t.Helper()
	f := &backdatedFlood{t: t, newest: time.Now().Truncate(time.Hour).Add(-time.Hour), logs: &testlog.Buffer{}}
	for i := range floodDevices {
		f.ids = append(f.ids, fmt.Sprintf("flood-%d", i))
	}
	f.db = openTestDB(t, f.ids...)
	f.tel = openTestTelemetry(t, f.db, &TelemetryOptions{FlushInterval: time.Hour,
		DeviceValuesRate: 1000, DeviceValuesBurst: 10000, Logger: slog.New(slog.NewTextHandler(f.logs, nil))})
	return f
}

// flood queues the samples (sample j of metric m is j+m) and flushes
// them.
func (f *backdatedFlood) flood() error {
	f.t.Helper()
	for j := range floodSamples {
		for _, id := range f.ids {
			var b strings.Builder
			b.WriteByte('{')
			for m := range floodMetrics {
				if m > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"m%02d":%d`, m, j+m)
			}
			b.WriteByte('}')
			s := mustSample(f.t, b.String())
			s.TS = f.newest.Add(-time.Duration(j) * time.Hour)
			if !f.tel.Add(id, s, time.Now()) {
				f.t.Fatalf("%s: sample %d not queued", id, j)
			}
		}
	}
	return f.tel.Flush(context.Background())
}

// check checks that every point of the devices stored is there, with
// its hourly rows and its device's last values (the newest sample's),
// and that nothing of the others is.
func (f *backdatedFlood) check(stored ...string) {
	f.t.Helper()
	t := f.t
	var rows int
	if err := f.db.R.QueryRow(`SELECT count(*) FROM telemetry_1h`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if want := len(stored) * floodSamples * floodMetrics; rows != want {
		t.Errorf("%d hourly rows, want %d", rows, want)
	}
	oldest := f.newest.Add(-(floodSamples - 1) * time.Hour)
	for _, id := range f.ids {
		want := slices.Contains(stored, id)
		pts, err := f.tel.Points(context.Background(), id, oldest, f.newest.Add(time.Minute), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if want && (len(pts) != floodSamples || len(pts[0].Values) != floodMetrics || pts[0].Values["m00"] != float64(floodSamples-1)) ||
			!want && len(pts) != 0 {
			t.Errorf("%s: %d points stored, want %d", id, len(pts), map[bool]int{true: floodSamples}[want])
		}
		var raw []byte
		if err := f.db.R.QueryRow(`SELECT COALESCE(last_values, '{}') FROM devices WHERE id = ?`, id).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var lv map[string]any
		if err := json.Unmarshal(raw, &lv); err != nil {
			t.Fatal(err)
		}
		if want && (len(lv) != floodMetrics || lv["m00"] != float64(0) || lv["m63"] != float64(63)) || !want && len(lv) != 0 {
			t.Errorf("%s: last values %s, want the newest sample's (m00 0 … m63 63)", id, raw)
		}
	}
}

// TestTelemetryBackdatedFloodSplitsTransactions: a backdated flood
// (backdatedFlood: 76,800 new hourly rows in one batch) is written in
// several transactions of about txRows rows each, a device's points
// split between two where a transaction ends (before, in one: 2.6
// million rows of 1,000 such devices outlasted the transaction's minute
// and the whole batch was lost), and every point is stored, with its
// hourly rollups and its device's last values. On PostgreSQL the rows
// each transaction inserted are counted apart, by the transaction id
// the server stamps on each row (xmin).
func TestTelemetryBackdatedFloodSplitsTransactions(t *testing.T) {
	f := newBackdatedFlood(t)
	tel := f.tel
	if err := f.flood(); err != nil {
		t.Fatalf("the flood's batch failed: %v", err)
	}
	const rows = floodDevices * floodSamples * floodMetrics
	stored, dropped := tel.Stats()
	if stored != floodDevices*floodSamples || dropped != 0 || count(tel.m.writeErrors) != 0 || count(tel.m.dbErrors) != 0 || count(tel.m.overRate) != 0 {
		t.Errorf("stored %d, dropped %d, failed batches %d, db_error %d, device_rate %d; want %d stored, nothing lost",
			stored, dropped, count(tel.m.writeErrors), count(tel.m.dbErrors), count(tel.m.overRate), floodDevices*floodSamples)
	}
	// One point past txRows at most: its metrics' rows, its chunk and
	// its device's last values.
	if most := tel.maxTxRows.Load(); most > txRows+MaxTelemetryMetrics+2 {
		t.Errorf("a transaction wrote %d rows, want at most about %d", most, txRows)
	}
	if n := count(tel.m.transactions); n < (rows+txRows-1)/txRows {
		t.Errorf("%d transactions for %d hourly rows, want at least %d", n, rows, (rows+txRows-1)/txRows)
	}
	if testPG != nil {
		var most int
		if err := f.db.R.QueryRow(`SELECT max(n) FROM (SELECT count(*) AS n FROM telemetry_1h GROUP BY xmin::text) AS t`).Scan(&most); err != nil {
			t.Fatal(err)
		}
		if most > txRows+MaxTelemetryMetrics {
			t.Errorf("one PostgreSQL transaction inserted %d hourly rows, want at most about %d", most, txRows)
		}
	}
	f.check(f.ids...)
}

// TestTelemetryBackdatedFloodRefusedDevice: in a backdated flood written
// in several transactions, a device whose hourly rows the database
// refuses (its points split between two of them) loses its points alone,
// in both, counted as db_error; the other devices' are stored.
func TestTelemetryBackdatedFloodRefusedDevice(t *testing.T) {
	f := newBackdatedFlood(t)
	// Device 3's rows are the 28,800th to the 38,400th: past txRows.
	refuseDevice(t, f.db, "telemetry_1h", "flood-3")
	if err := f.flood(); err != nil {
		t.Fatalf("the flood's batch failed: %v", err)
	}
	stored, _ := f.tel.Stats()
	if want := (floodDevices - 1) * floodSamples; stored != int64(want) || count(f.tel.m.dbErrors) != floodSamples || count(f.tel.m.writeErrors) != 0 {
		t.Errorf("stored %d, db_error %d, failed batches %d; want %d, %d, 0", stored, count(f.tel.m.dbErrors), count(f.tel.m.writeErrors), want, floodSamples)
	}
	if n := count(f.tel.m.transactions); n < 3 {
		t.Errorf("%d transactions, want the flood split into at least 3", n)
	}
	f.check(slices.DeleteFunc(slices.Clone(f.ids), func(id string) bool { return id == "flood-3" })...)
}

// TestTelemetryBackdatedFloodLostConnection: PostgreSQL ends the
// writer's connection in the second transaction of a backdated flood's
// batch (after the first was committed), and again in the transaction
// that writes it again device by device (batchWrite), so that it is
// written a third time (retryTransient), from what the first committed:
// nothing is lost or written twice.
func TestTelemetryBackdatedFloodLostConnection(t *testing.T) {
	if testPG == nil {
		t.Skip("PostgreSQL only: SQLite has no connection to lose")
	}
	f := newBackdatedFlood(t)
	killAt(t, f.db, "telemetry_1h", txRows+1000, txRows+3000) // hourly rows of the second transaction, and of its second try
	if err := f.flood(); err != nil {
		t.Fatalf("the flood's batch failed: %v", err)
	}
	stored, _ := f.tel.Stats()
	if stored != floodDevices*floodSamples || count(f.tel.m.dbErrors) != 0 || count(f.tel.m.writeErrors) != 0 {
		t.Errorf("stored %d, db_error %d, failed batches %d; want %d, 0, 0", stored, count(f.tel.m.dbErrors), count(f.tel.m.writeErrors), floodDevices*floodSamples)
	}
	f.check(f.ids...)
	if out := f.logs.String(); !strings.Contains(out, "batch written after a fault of the database") || !strings.Contains(out, "attempts=2") {
		t.Errorf("want the second transaction written on its second attempt:\n%s", out)
	}
	// Each point once: the hourly rows count one number each.
	var most int64
	if err := f.db.R.QueryRow(`SELECT max(n) FROM telemetry_1h`).Scan(&most); err != nil {
		t.Fatal(err)
	}
	if most != 1 {
		t.Errorf("an hourly row counts %d numbers, want 1 (each point written once)", most)
	}
}
