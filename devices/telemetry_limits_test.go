package devices

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// namesSample is a sample of n metrics named prefix0..prefix(n-1), each
// padded to pad bytes of name.
func namesSample(t *testing.T, prefix string, n, pad int) Sample {
	t.Helper()
	var b strings.Builder
	b.WriteByte('{')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		name := fmt.Sprintf("%s%d", prefix, i)
		name += strings.Repeat("x", max(0, pad-len(name)))
		fmt.Fprintf(&b, `%q:%d`, name, i)
	}
	b.WriteByte('}')
	return mustSample(t, b.String())
}

func lastValueKeys(t *testing.T, db *DB, id string) int {
	t.Helper()
	var n int
	if err := db.R.QueryRow(`SELECT count(*) FROM devices, json_each(devices.last_values) WHERE devices.id = ?`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTelemetryMetricNameCap: a device keeps at most MaxDeviceMetrics
// metric names (SPEC §6) in its history and its last_values; metrics with
// new names beyond are left out and counted, known ones still stored,
// other devices unaffected; the cap survives a restart, and a device
// forgotten (deleted) starts clean.
func TestTelemetryMetricNameCap(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "greedy", "calm")
	tel, err := OpenTelemetry(ctx, db, &TelemetryOptions{FlushInterval: time.Hour, LastValues: testRegistry(t, db)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range MaxDeviceMetrics / 256 {
		if !tel.Add("greedy", namesSample(t, fmt.Sprintf("m%d_", i), 256, 0), now) {
			t.Fatalf("sample %d refused", i)
		}
	}
	if n := tel.MetricsRefused(); n != 0 {
		t.Fatalf("refused %d metrics under the cap", n)
	}
	// All new names: nothing to store.
	if tel.Add("greedy", namesSample(t, "new_", 256, 0), now) {
		t.Fatal("a sample of only new names past the cap was queued")
	}
	// Known names with new ones: the known ones are stored.
	mixed := mustSample(t, `{"late":1,"m0_0":42,"m3_255":43,"later":2}`)
	if !tel.Add("greedy", mixed, now.Add(time.Second)) {
		t.Fatal("known metrics refused")
	}
	if n := tel.MetricsRefused(); n != 256+2 {
		t.Fatalf("refused %d metrics, want %d", n, 256+2)
	}
	if !tel.Add("calm", namesSample(t, "c", 10, 0), now) {
		t.Fatal("another device refused")
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := lastValueKeys(t, db, "greedy"); n != MaxDeviceMetrics {
		t.Fatalf("last_values holds %d names, want %d", n, MaxDeviceMetrics)
	}
	pts, err := tel.Points(ctx, "greedy", now.Add(500*time.Millisecond), now.Add(2*time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 1 || len(pts[0].Values) != 2 || pts[0].Values["m0_0"] != 42.0 {
		t.Fatalf("the mixed sample stored as %+v", pts)
	}
	tel.Close()

	// After a restart the names come back from last_values.
	tel = openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	if tel.Add("greedy", mustSample(t, `{"after_restart":1}`), now) {
		t.Fatal("a new name past the cap was queued after a restart")
	}
	if !tel.Add("greedy", mustSample(t, `{"m1_7":1}`), now) {
		t.Fatal("a known name refused after a restart")
	}
	tel.DeviceDeleted("greedy")
	if !tel.Add("greedy", mustSample(t, `{"fresh":1}`), now) {
		t.Fatal("a forgotten device is still capped")
	}
}

// TestTelemetryQueueBytes: the queue is bounded by bytes as well as by
// count: with the writer held, large samples stop being queued once
// QueueBytes are waiting, Add never blocks, and what was queued is stored.
func TestTelemetryQueueBytes(t *testing.T) {
	sqliteOnly(t, "holds SQLite's one writer connection")
	ctx := context.Background()
	db := openTestDB(t, "big")
	const queueBytes = 1 << 20
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: 10 * time.Millisecond, QueueBytes: queueBytes})
	tx, err := db.W.BeginTx(ctx, nil) // the only writer connection
	if err != nil {
		t.Fatal(err)
	}
	s := namesSample(t, "m", 200, 120) // ~26 KB, the same names each time
	if len(s.JSON) < 20_000 {
		t.Fatalf("sample of %d bytes", len(s.JSON))
	}
	queued := 0
	for range 1000 {
		if tel.Add("big", s, time.Now()) {
			queued++
		}
	}
	if max := queueBytes / len(s.JSON); queued > max {
		t.Fatalf("queued %d samples of %d bytes with a bound of %d bytes", queued, len(s.JSON), queueBytes)
	}
	if _, dropped := tel.Stats(); dropped != int64(1000-queued) {
		t.Fatalf("dropped %d, want %d", dropped, 1000-queued)
	}
	if held := tel.budget.held(); held > queueBytes {
		t.Fatalf("the budget holds %d bytes", held)
	}
	tx.Rollback()
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if stored, _ := tel.Stats(); stored != int64(queued) {
		t.Fatalf("stored %d of %d queued", stored, queued)
	}
	if held := tel.budget.held(); held != 0 {
		t.Fatalf("the budget still holds %d bytes after the flush", held)
	}
	// Room again.
	if !tel.Add("big", s, time.Now()) {
		t.Fatal("Add refused after the queue drained")
	}
}

// TestMetricNamesFilter: the filtered object keeps the allowed members in
// order, as valid compact JSON.
func TestMetricNamesFilter(t *testing.T) {
	m := newMetricNames()
	var b bytes.Buffer
	b.WriteByte('{')
	for i := range MaxDeviceMetrics - 1 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":%d`, i, i)
	}
	b.WriteByte('}')
	if _, n := m.filter("d", b.Bytes()); n != 0 {
		t.Fatalf("refused %d", n)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"a":"x,y","b":2,"k5":true}`, `{"a":"x,y","k5":true}`},
		{`{"c":1,"k1":2}`, `{"k1":2}`},
		{`{"k1":2,"c":1,"k2":"\""}`, `{"k1":2,"k2":"\""}`},
		{`{"a":3}`, `{"a":3}`},
	} {
		got, _ := m.filter("d", []byte(tc.in))
		if string(got) != tc.want {
			t.Errorf("filter(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if got, n := m.filter("d", []byte(`{"z":1,"y":2}`)); got != nil || n != 2 {
		t.Errorf("all new past the cap: %s, %d refused", got, n)
	}
}

// TestMetricNamesKeysMemo: a sample with the keys of the device's last
// fully known sample passes without hashing each name (with its keys'
// hash, as the parser gives it, without a lock), and the memo never lets
// a new name past the cap: not as a prefix, a suffix, a reordering or an
// escape of a known key.
func TestMetricNamesKeysMemo(t *testing.T) {
	for _, hashed := range []bool{false, true} {
		m := newMetricNames()
		filter := func(obj []byte) ([]byte, int, uint64) {
			h := uint64(0)
			if hashed {
				h = keysHash(obj)
			}
			return m.filterKeys("d", obj, h)
		}
		var b bytes.Buffer
		b.WriteByte('{')
		for i := range MaxDeviceMetrics - 2 {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		b.WriteString(`"a\"b":1,"ab":2}`)
		if _, n, _ := filter(b.Bytes()); n != 0 {
			t.Fatalf("refused %d", n)
		}
		var memo uint64
		for _, tc := range []struct {
			in      string
			refused int
			same    bool // the keys of the sample before
		}{
			{`{"a\"b":1,"ab":2}`, 0, false},
			{`{"a\"b":3,"ab":"x"}`, 0, true},         // same keys, memo
			{`{"ab":3,"a\"b":4}`, 0, false},          // reordered: known all the same
			{`{"a\"b":1,"ab":2,"c":3}`, 1, false},    // one more
			{`{"a\"b":1}`, 0, false},                 // a prefix of the memo
			{`{"a\"b":1,"abc":2}`, 1, false},         // a key longer than the memo's
			{`{"a\"b":1,"a":2}`, 1, false},           // shorter
			{`{"a\"b":1,"ab":2,"k0":0}`, 0, false},   // known
			{`{"a\"b":1,"ab":2,"k0\"":0}`, 1, false}, // new
			{`{"a\"b":5,"ab":6,"k0":7}`, 0, true},    // the memo again
		} {
			got, n, version := filter([]byte(tc.in))
			if n != tc.refused || (n == 0) != (string(got) == tc.in) {
				t.Errorf("hashed %v: filter(%s) = %s, %d refused; want %d", hashed, tc.in, got, n, tc.refused)
			}
			if (n == 0) != (version != 0) || tc.same != (version == memo) {
				t.Errorf("hashed %v: filter(%s): keys version %d after %d", hashed, tc.in, version, memo)
			}
			if n == 0 {
				memo = version
			}
		}
	}
}

// FuzzSameKeys: sameKeys says two compact objects have the same keys in
// the same order exactly when they do.
func FuzzSameKeys(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":"x,y"}`), []byte(`{"a":2,"b":true}`))
	f.Add([]byte(`{"a\"b":1}`), []byte(`{"a":1,"b":2}`))
	f.Add([]byte(`{"o":{"p":1},"q":"\\"}`), []byte(`{"o.p":1,"q":"z"}`))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		sa, err := ParseTelemetry(a)
		if err != nil {
			return
		}
		sb, err := ParseTelemetry(b)
		if err != nil {
			return
		}
		var ka, kb []string
		eachMember(sa.JSON, func(k, _ []byte) { ka = append(ka, string(k)) })
		eachMember(sb.JSON, func(k, _ []byte) { kb = append(kb, string(k)) })
		memo := appendKeys(nil, sa.JSON)
		if memo == nil {
			return // too long to keep
		}
		if got, want := sameKeys(sb.JSON, memo), slices.Equal(ka, kb); got != want {
			t.Fatalf("sameKeys(%s, keys of %s) = %v", sb.JSON, sa.JSON, got)
		}
	})
}
