package devices

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// TestTelemetryValuesStoredExactly: what a device publishes, parsed as the
// MQTT hook parses it (ParseTelemetryShared) and added with its keys'
// hash, comes back from the history and the last values exactly: strings
// with escapes, numbers in any spelling (1e5, -0, 21.50) as the double
// they spell, booleans; the same keys again (the metric-name check's
// memo and the writer's columns found in place), in another order, a key
// with a quote; nested objects flattened, arrays and nesting past
// MaxTelemetryDepth refused as before.
func TestTelemetryValuesStoredExactly(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "x")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	payloads := []string{
		`{"s":"a\"b\\c\u00e9\n\/","n":1e5,"z":-0,"d":21.50,"b":true,"f":false}`,
		`{"s":"plain","n":1E+5,"z":-0.0,"d":21.5,"b":false,"f":true}`,  // compact: shared
		`{"s":"plain","n":2.5e-3,"z":0,"d":-21.50,"b":false,"f":true}`, // the same keys
		`{"b":true,"d":0.1,"s":"x,y}"}`,                                // another order
		`{"q\"k":2,"s":"\"","d":1.7976931348623157e308}`,
		`{"q\"k":3,"s":"","d":5e-324}`,
		`{"o":{"p":1.25,"r":{"s":"deep"}},"d":123456789.123456789}`,
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	for i, p := range payloads {
		s, err := ParseTelemetryShared([]byte(p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if s.keys == 0 {
			t.Fatalf("%s: no keys hash", p)
		}
		if !tel.Add("x", s, base.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("%s: not queued", p)
		}
	}
	for _, p := range []string{`{"a":[1]}`, `{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}`, `{"a":null}`} {
		if _, err := ParseTelemetryShared([]byte(p)); !errors.Is(err, ErrTelemetryBadValue) {
			t.Errorf("%s: %v, want %v", p, err, ErrTelemetryBadValue)
		}
	}
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pts, err := tel.Points(ctx, "x", base.Add(-time.Second), base.Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != len(payloads) {
		t.Fatalf("%d points stored of %d", len(pts), len(payloads))
	}
	last := map[string]any{}
	for i, p := range payloads {
		want := flatValues(t, p)
		for k, v := range want {
			last[k] = v
		}
		if got := pts[i].Values; !sameValues(got, want) {
			t.Errorf("%s stored as %#v, want %#v", p, got, want)
		}
	}
	var raw []byte
	if err := db.R.QueryRowContext(ctx, `SELECT last_values FROM devices WHERE id = 'x'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if !sameValues(got, last) {
		t.Errorf("last values %s, want %#v", raw, last)
	}
}

// flatValues decodes payload as encoding/json does, nested objects
// flattened with dots.
func flatValues(t *testing.T, payload string) map[string]any {
	t.Helper()
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(payload))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	flattenRef(out, "", m)
	for k, v := range out {
		if n, ok := v.(json.Number); ok {
			f, err := strconv.ParseFloat(string(n), 64)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = f
		}
	}
	return out
}

// sameValues compares values, numbers bit for bit (-0 is not 0).
func sameValues(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok {
			return false
		}
		if f, ok := v.(float64); ok {
			g, ok := w.(float64)
			if !ok || math.Float64bits(f) != math.Float64bits(g) {
				return false
			}
			continue
		}
		if v != w {
			return false
		}
	}
	return true
}

// FuzzChunkAdd: the writer reads a point's metrics into its chunk's
// columns in one pass, finding a column in place when the member is in
// its usual position (openChunk.add); the chunk it makes encodes to the
// bytes, and the hourly rollups to the aggregates, of the reference: each
// member read with eachMember and its column looked up by decoded name.
// Three payloads go into one chunk, so that keys repeat, move and change.
func FuzzChunkAdd(f *testing.F) {
	for _, s := range [][3]string{
		{`{"temp":21.5,"hum":40,"on":true,"fw":"1.2.3"}`, `{"temp":21.50,"hum":41,"on":false,"fw":"1.2.3"}`, `{"hum":1e5,"temp":-0}`},
		{`{"a\"b":1,"a":"x"}`, `{"a":2,"a\"b":"\\"}`, `{"a\u0022b":3}`},
		{`{"ts":1795662000000,"o":{"p":1,"q":"\u00e9"}}`, `{"o.p":2}`, `{"o":{"q":"z"},"n":null}`},
		{`{"t":"tr","tr":1}`, `{"t":1,"tr":"t"}`, `{"x":"\":1,\"y\":2"}`},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var objs [][]byte
		for _, p := range []string{a, b, c} {
			if s, err := ParseTelemetryShared([]byte(p)); err == nil {
				objs = append(objs, s.JSON)
			}
		}
		if len(objs) == 0 {
			return
		}
		got, gotR := &openChunk{device: "d", idx: map[string]int{}, sorted: true, maxPoints: chunkPoints}, newRollups(true, database.SQLite)
		want, wantR := &openChunk{device: "d", idx: map[string]int{}, sorted: true, maxPoints: chunkPoints}, newRollups(true, database.SQLite)
		for i, obj := range objs {
			ts := int64(1795662000000 + i*1000)
			got.add(ts, obj, gotR)
			referenceAdd(want, ts, obj, wantR)
		}
		if g, w := encodeChunk(nil, &got.data), encodeChunk(nil, &want.data); string(g) != string(w) {
			t.Fatalf("%q: chunk %x, reference %x", objs, g, w)
		}
		if len(gotR.hours) != len(wantR.hours) {
			t.Fatalf("%q: %d hourly aggregates, reference %d", objs, len(gotR.hours), len(wantR.hours))
		}
		for k, a := range wantR.hours {
			if g := gotR.hours[k]; g == nil || *g != *a {
				t.Fatalf("%q: %v: aggregate %+v, reference %+v", objs, k, g, a)
			}
		}
	})
}

// referenceAdd is openChunk.add as eachMember reads a point: every
// column looked up by its decoded name.
func referenceAdd(c *openChunk, ts int64, obj []byte, r *rollups) {
	n := len(c.data.ts)
	c.data.ts = append(c.data.ts, ts)
	for i := range c.data.cols {
		c.data.cols[i].syms = append(c.data.cols[i].syms, symAbsent)
		if c.data.cols[i].nums != nil {
			c.data.cols[i].nums = append(c.data.cols[i].nums, 0)
		}
	}
	eachMember(obj, func(k, v []byte) {
		i := c.data.colIndex(metricName(k), c.idx)
		col := &c.data.cols[i]
		if f, err := parseNumber(v); err == nil && v[0] != '"' {
			if col.nums == nil {
				col.nums = make([]float64, len(col.syms))
			}
			col.syms[n], col.nums[n] = symNumber, f
			r.add(c.device, col.name, ts, f, time.Time{})
			return
		}
		col.setDict(n, v)
	})
}

// TestKeysHashLong: keys longer than keysHasher gathers hash as the same
// bytes would in one piece, and each key counts, in order.
func TestKeysHashLong(t *testing.T) {
	long := strings.Repeat("k", 100)
	a := []byte(`{"` + long + `1":1,"` + long + `2":2}`)
	b := []byte(`{"` + long + `2":1,"` + long + `1":2}`)
	var want []byte
	eachMember(a, func(k, _ []byte) { want = append(append(want, byte(len(k)>>8), byte(len(k))), k...) })
	if got := keysHash(a); got != max(maphash.Bytes(keysSeed, want), 1) {
		t.Errorf("keysHash of long keys %x, want the hash of their bytes", got)
	}
	if keysHash(a) == keysHash(b) {
		t.Error("keys in another order hash the same")
	}
	if s, err := ParseTelemetryShared(a); err != nil || s.keys != keysHash(a) {
		t.Errorf("parsed: %x %v, want %x", s.keys, err, keysHash(a))
	}
}

// TestChunkColumnNumbersOnlyWhenNumeric: a writer's column of strings and
// booleans keeps no numbers (4 bytes a point, not 12); a column whose
// first number comes late gets them then, zero before; and the chunk,
// its points out of order and sorted, decodes to every value.
func TestChunkColumnNumbersOnlyWhenNumeric(t *testing.T) {
	var spare spareArrays
	c := &openChunk{device: "d", idx: map[string]int{}, sorted: true, maxPoints: chunkPoints}
	c.data.spare = &spare
	r := newRollups(true, database.SQLite)
	base := int64(1795662000000)
	for i, p := range []string{
		`{"temp":21.5,"on":true,"fw":"1.2.3"}`,
		`{"temp":21.6,"on":false,"fw":"1.2.3","mode":"eco"}`,
		`{"temp":21.4,"on":true,"fw":"1.2.4","mode":7}`,
	} {
		s, err := ParseTelemetryShared([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		c.add(base+int64(1000*(3-i)), s.JSON, r) // newest first
	}
	col := func(name string) *chunkCol { return &c.data.cols[c.idx[name]] }
	if col("on").nums != nil || col("fw").nums != nil {
		t.Errorf("string and boolean columns hold %d and %d numbers, want none", len(col("on").nums), len(col("fw").nums))
	}
	if m := col("mode"); len(m.nums) != 3 || m.nums[2] != 7 || m.syms[0] != symAbsent {
		t.Fatalf("mixed column: syms %v nums %v", m.syms, m.nums)
	}
	c.sort()
	if col("on").nums != nil || col("mode").nums[0] != 7 || col("temp").nums[0] != 21.4 {
		t.Fatalf("sorted: on %v, mode %v, temp %v", col("on").nums, col("mode").nums, col("temp").nums)
	}
	got, err := decodeChunk(encodeChunk(nil, &c.data), nil)
	if err != nil {
		t.Fatal(err)
	}
	sameChunk(t, &c.data, got)
	if tail := c.data.slice(1, 3); tail.cols[c.idx["fw"]].nums != nil || len(tail.cols[c.idx["mode"]].nums) != 2 {
		t.Errorf("slice: fw %v, mode %v", tail.cols[c.idx["fw"]].nums, tail.cols[c.idx["mode"]].nums)
	}
	// Recycled: the numbers' arrays go to numeric columns only.
	spare.keep(&c.data)
	if len(spare.syms) != 4 || len(spare.nums) != 2 {
		t.Errorf("kept %d symbol and %d number arrays, want 4 and 2", len(spare.syms), len(spare.nums))
	}
}
