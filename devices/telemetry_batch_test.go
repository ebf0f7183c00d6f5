package devices

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestTelemetryBatchOrder: one batch with two devices' points interleaved,
// out of time order, metrics in changing order, names spelled with
// escapes and more metrics than the merge compares one by one: each point
// comes back with its own values under the right names, and each device's
// last values hold its latest value of every metric.
func TestTelemetryBatchOrder(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	at := func(s int) string { return jsonString(float64(base.Add(time.Duration(s) * time.Second).UnixMilli())) }
	// d2 sends 20 metrics m0..m19, in a different order each time, and
	// one of them only in the first and last point.
	d2 := func(s int, reverse bool) string {
		var ms []string
		for i := range 20 {
			if i == 7 && s != 0 && s != 3 {
				continue
			}
			ms = append(ms, fmt.Sprintf(`"m%d":%d`, i, 100*s+i))
		}
		if reverse {
			for i, j := 0, len(ms)-1; i < j; i, j = i+1, j-1 {
				ms[i], ms[j] = ms[j], ms[i]
			}
		}
		return `{` + strings.Join(ms, ",") + `,"ts":` + at(s) + `}`
	}
	for _, p := range []struct{ dev, payload string }{
		{"d1", `{"t":2,"a\\\\b":20,"ts":` + at(2) + `}`},
		{"d2", d2(0, false)},
		{"d1", `{"a\\b":10,"t":1,"ts":` + at(1) + `}`},
		{"d2", d2(2, true)},
		{"d1", `{"t":3,"mode":"eco","ts":` + at(3) + `}`},
		{"d2", d2(1, true)},
		{"d1", `{"mode":"off","a\\\\b":40,"ts":` + at(0) + `}`},
		{"d2", d2(3, false)},
	} {
		if !tel.Add(p.dev, mustSample(t, p.payload), time.Now()) {
			t.Fatal("Add refused")
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// `"a\\b"` is the name a\b; `"a\\\\b"` is a\\b.
	pts, err := tel.Points(ctx, "d1", base, base.Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"mode": "off", `a\\b`: 40.0},
		{`a\b`: 10.0, "t": 1.0},
		{"t": 2.0, `a\\b`: 20.0},
		{"t": 3.0, "mode": "eco"},
	}
	if len(pts) != len(want) {
		t.Fatalf("d1: %d points, want %d: %v", len(pts), len(want), pts)
	}
	for i, p := range pts {
		if !p.TS.Equal(base.Add(time.Duration(i)*time.Second)) || fmt.Sprint(p.Values) != fmt.Sprint(want[i]) {
			t.Errorf("d1 point %d: %v %v, want %v", i, p.TS, p.Values, want[i])
		}
	}
	pts, err = tel.Points(ctx, "d2", base, base.Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 4 {
		t.Fatalf("d2: %d points", len(pts))
	}
	for s, p := range pts {
		n := 20
		if s == 1 || s == 2 {
			n = 19
		}
		if len(p.Values) != n || p.Values["m5"] != float64(100*s+5) {
			t.Errorf("d2 point %d: %v", s, p.Values)
		}
	}

	last := func(id string) map[string]any {
		var s string
		if err := db.R.QueryRow(`SELECT last_values FROM devices WHERE id = ?`, id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if got, want := fmt.Sprint(last("d1")), fmt.Sprint(map[string]any{"t": 3.0, "mode": "eco", `a\b`: 10.0, `a\\b`: 20.0}); got != want {
		t.Errorf("d1 last values %s, want %s", got, want)
	}
	lv := last("d2")
	for i := range 20 {
		if lv[fmt.Sprintf("m%d", i)] != float64(300+i) {
			t.Errorf("d2 last values: m%d = %v, want %d", i, lv[fmt.Sprintf("m%d", i)], 300+i)
		}
	}
}

// TestTelemetryLastValuesManyDevices: one batch from more devices than
// one statement updates, and from a device that is not registered: every
// registered device gets its own latest values and last seen.
func TestTelemetryLastValuesManyDevices(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	reg := testRegistry(t, db)
	const n = 2*lastValuesRows + 7
	nds := make([]NewDevice, n)
	for i := range nds {
		nds[i] = NewDevice{ID: fmt.Sprintf("d%03d", i), Name: "x"}
	}
	if _, err := reg.CreateDevices(ctx, nds); err != nil {
		t.Fatal(err)
	}
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	seen := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for round := range 2 {
		for i := range n {
			tel.Add(fmt.Sprintf("d%03d", i), mustSample(t, fmt.Sprintf(`{"v":%d,"r%d":true}`, 1000*round+i, round)), seen.Add(time.Duration(i)*time.Second))
		}
		tel.Add("ghost", mustSample(t, `{"v":1}`), seen)
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := db.R.Query(`SELECT id, last_values, last_seen FROM devices ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for ; rows.Next(); i++ {
		var id, lv, ls string
		if err := rows.Scan(&id, &lv, &ls); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(lv), &m); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"v": float64(1000 + i), "r0": true, "r1": true}
		if id != fmt.Sprintf("d%03d", i) || fmt.Sprint(m) != fmt.Sprint(want) || ls != fmtTime(seen.Add(time.Duration(i)*time.Second)) {
			t.Errorf("%s: last values %s, last seen %s; want %v", id, lv, ls, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != n {
		t.Errorf("%d devices, want %d", i, n)
	}
}

// TestTelemetryLastValuesSameKeys: points with the same keys (merged by
// taking the latest whole), out of time order, then a batch where the
// keys change midway and one where a point is dropped between two with
// the same keys: last values are the latest value of each metric by
// timestamp every time.
func TestTelemetryLastValuesSameKeys(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "s1")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC).UnixMilli()
	add := func(ts int64, payload string) {
		s := mustSample(t, payload)
		s.TS = time.UnixMilli(base + ts)
		if !tel.Add("s1", s, time.Now()) {
			t.Fatal("Add refused")
		}
	}
	last := func() string {
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := db.R.QueryRow(`SELECT last_values FROM devices WHERE id = 's1'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(m)
	}
	add(3, `{"a":1,"b":"x"}`)
	add(1, `{"a":2,"b":"y"}`)
	add(2, `{"a":3,"b":"z"}`)
	if got, want := last(), fmt.Sprint(map[string]any{"a": 1.0, "b": "x"}); got != want {
		t.Errorf("same keys: %s, want %s", got, want)
	}
	add(10, `{"a":4,"b":"p"}`)
	add(12, `{"a":5,"c":true}`)
	add(11, `{"a":6,"c":false}`)
	if got, want := last(), fmt.Sprint(map[string]any{"a": 5.0, "b": "p", "c": true}); got != want {
		t.Errorf("keys changed: %s, want %s", got, want)
	}
	add(20, `{"a":7,"c":true}`)
	add(21, `{"a":8,"c":true,"d":1}`)
	add(22, `{"a":9,"c":false}`)
	if got, want := last(), fmt.Sprint(map[string]any{"a": 9.0, "b": "p", "c": false, "d": 1.0}); got != want {
		t.Errorf("keys changed and back: %s, want %s", got, want)
	}
}

// TestTelemetryLastSeenLatestArrival: a device's last_seen after a batch
// is the latest arrival among its points, whichever order they were
// queued in and whatever their keys (the merge by keys version and the
// merge member by member alike).
func TestTelemetryLastSeenLatestArrival(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "same", "mixed")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	for _, a := range []struct {
		dev, payload string
		arrived      int
	}{
		{"same", `{"t":1}`, 5},
		{"mixed", `{"t":1}`, 1},
		{"same", `{"t":2}`, 9},  // the latest
		{"mixed", `{"u":2}`, 8}, // the latest
		{"same", `{"t":3}`, 7},
		{"mixed", `{"t":3,"u":3}`, 2},
	} {
		if !tel.Add(a.dev, mustSample(t, a.payload), base.Add(time.Duration(a.arrived)*time.Second)) {
			t.Fatal("Add refused")
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	reg := testRegistry(t, db)
	for id, want := range map[string]time.Time{"same": base.Add(9 * time.Second), "mixed": base.Add(8 * time.Second)} {
		d, err := reg.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.LastSeen == nil || !d.LastSeen.Equal(want) {
			t.Errorf("%s: last_seen %v, want %v", id, d.LastSeen, want)
		}
	}
}

// TestTelemetryAddNowArrival: AddNow (the hook's call) stamps a point
// without a timestamp, and its device's last_seen, with the wall clock
// read once (arrivalNow), to the millisecond a chunk stores: between
// time.Now before and after the call. A point with its own timestamp
// keeps it.
func TestTelemetryAddNowArrival(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	before := time.Now()
	if !tel.AddNow("d1", mustSample(t, `{"t":1}`)) {
		t.Fatal("AddNow refused")
	}
	after := time.Now()
	own := time.Date(2026, 1, 1, 3, 0, 0, 7e6, time.UTC)
	if !tel.AddNow("d2", mustSample(t, `{"t":2,"ts":"2026-01-01T03:00:00.007Z"}`)) {
		t.Fatal("AddNow refused")
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pts, err := tel.Points(ctx, "d1", before.Add(-time.Second), after.Add(time.Second), 10)
	if err != nil || len(pts) != 1 {
		t.Fatalf("points %v, %v", pts, err)
	}
	if got := pts[0].TS.UnixMilli(); got < before.UnixMilli() || got > after.UnixMilli() {
		t.Errorf("timestamp %v, want within [%v, %v]", pts[0].TS, before, after)
	}
	pts, err = tel.Points(ctx, "d2", own.Add(-time.Second), own.Add(time.Second), 10)
	if err != nil || len(pts) != 1 || !pts[0].TS.Equal(own) {
		t.Fatalf("own timestamp: points %v, %v; want at %v", pts, err, own)
	}
	d, err := testRegistry(t, db).Device(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.LastSeen == nil || d.LastSeen.Before(before.Truncate(time.Microsecond)) || d.LastSeen.After(after) {
		t.Errorf("last_seen %v, want within [%v, %v]", d.LastSeen, before, after)
	}
}

// TestTelemetryDeviceForgottenInBatch: the writer groups a batch by the
// devices' metric names (queued.dev); a device forgotten (deleted) and
// publishing again under its id within one batch has new names, and its
// points still make one device of the batch: every point stored once,
// in one history, and its last values and last_seen the latest.
func TestTelemetryDeviceForgottenInBatch(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "d1", "d2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	add := func(dev, payload string, sec int) {
		t.Helper()
		if !tel.Add(dev, mustSample(t, payload), base.Add(time.Duration(sec)*time.Second)) {
			t.Fatal("Add refused")
		}
	}
	add("d1", `{"t":1,"u":1}`, 1)
	add("d2", `{"t":1}`, 1)
	add("d1", `{"t":2,"u":2}`, 2)
	tel.DeviceDeleted("d1")
	add("d1", `{"t":3}`, 3)
	add("d2", `{"t":2}`, 3)
	add("d1", `{"t":4}`, 4)
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pts, err := tel.Points(ctx, "d1", base, base.Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []any
	for _, p := range pts {
		got = append(got, p.Values["t"])
	}
	if fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("d1's points: %v, want t 1 2 3 4", got)
	}
	var chunks int
	if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM telemetry_chunks WHERE device_id = 'd1'`).Scan(&chunks); err != nil || chunks != 1 {
		t.Errorf("d1's chunk rows: %d, %v; want 1", chunks, err)
	}
	reg := testRegistry(t, db)
	d, err := reg.Device(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d.LastValues) != fmt.Sprint(map[string]any{"t": 4.0, "u": 2.0}) || d.LastSeen == nil || !d.LastSeen.Equal(base.Add(4*time.Second)) {
		t.Errorf("d1: last values %v, last seen %v", d.LastValues, d.LastSeen)
	}
}
