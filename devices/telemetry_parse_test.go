package devices

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTelemetryParse(t *testing.T) {
	ts := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		in      string
		want    map[string]any
		wantTS  time.Time
		wantErr error
	}{
		{"metrics", `{"temp":21.5,"on":true,"mode":"eco"}`, map[string]any{"temp": 21.5, "on": true, "mode": "eco"}, time.Time{}, nil},
		{"rfc3339 ts", `{"ts":"2026-11-26T03:00:00Z","v":1}`, map[string]any{"v": 1.0}, ts, nil},
		{"unix ms ts", `{"ts":` + "1795662000000" + `,"v":1}`, map[string]any{"v": 1.0}, ts, nil},
		{"leading space", " \n{\"v\":-1e3}", map[string]any{"v": -1000.0}, time.Time{}, nil},
		{"not json", `hello`, nil, time.Time{}, ErrTelemetryNotObject},
		{"empty", ``, nil, time.Time{}, ErrTelemetryNotObject},
		{"array", `[1,2]`, nil, time.Time{}, ErrTelemetryNotObject},
		{"number", `42`, nil, time.Time{}, ErrTelemetryNotObject},
		{"broken", `{"v":1`, nil, time.Time{}, ErrTelemetryNotObject},
		{"NaN", `{"v":NaN}`, nil, time.Time{}, ErrTelemetryNotObject},
		{"huge number", `{"v":1e999}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"array value", `{"v":[1]}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"U+0000 in a string", `{"s":"a\u0000b"}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"U+0000 in a name", `{"a\u0000":1}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"nested flattened", `{"AM2301":{"Temperature":22.1,"Humidity":45},"TempUnit":"C"}`, map[string]any{"AM2301.Temperature": 22.1, "AM2301.Humidity": 45.0, "TempUnit": "C"}, time.Time{}, nil},
		{"tasmota SENSOR", `{"Time":"2026-11-26T03:00:00","ENERGY":{"Total":1.5,"Power":30},"DS18B20":{"Id":"01","Temperature":19.3}}`,
			map[string]any{"Time": "2026-11-26T03:00:00", "ENERGY.Total": 1.5, "ENERGY.Power": 30.0, "DS18B20.Id": "01", "DS18B20.Temperature": 19.3}, time.Time{}, nil},
		{"deeper", `{"a":{"b":{"c":{"d":true}}},"ts":1795662000000}`, map[string]any{"a.b.c.d": true}, ts, nil},
		{"escaped nested name", `{"a\"b":{"c\u00e9":1}}`, map[string]any{"a\"b.c\u00e9": 1.0}, time.Time{}, nil},
		{"nested ts is a metric", `{"x":{"ts":5}}`, map[string]any{"x.ts": 5.0}, time.Time{}, nil},
		{"empty nested", `{"a":{},"b":1}`, map[string]any{"b": 1.0}, time.Time{}, nil},
		{"only empty nested", `{"a":{"b":{}}}`, nil, time.Time{}, ErrTelemetryEmpty},
		{"duplicate after flattening", `{"a.b":1,"a":{"b":2}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"metric and object of one name", `{"a":0,"a":{"b":0}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"object and metric of one name", `{"a":{"b":0},"a":1}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"object twice", `{"a":{"b":0},"a":{"c":1}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"empty nested name", `{"a":{"":0}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"too many objects", strings.Replace(manyMetrics(MaxTelemetryMetrics+1), ":1", ":{}", -1), nil, time.Time{}, ErrTelemetryTooLarge},
		{"nested array", `{"ENERGY":{"Power":[1,2]}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"nested null", `{"a":{"b":null}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"depth 8", strings.Repeat(`{"a":`, 8) + "1" + strings.Repeat("}", 8), map[string]any{strings.Repeat("a.", 7) + "a": 1.0}, time.Time{}, nil},
		{"depth 9", strings.Repeat(`{"a":`, 9) + "1" + strings.Repeat("}", 9), nil, time.Time{}, ErrTelemetryBadValue},
		{"flattened name too long", `{"` + strings.Repeat("x", 100) + `":{"` + strings.Repeat("y", 40) + `":1}}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"broken nested", `{"a":{"b":1}`, nil, time.Time{}, ErrTelemetryNotObject},
		{"null value", `{"v":null}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"long string", `{"v":"` + strings.Repeat("x", MaxMetricString+1) + `"}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"empty name", `{"":1}`, nil, time.Time{}, ErrTelemetryBadValue},
		{"bad ts string", `{"ts":"yesterday","v":1}`, nil, time.Time{}, ErrTelemetryBadTS},
		{"bad ts type", `{"ts":true,"v":1}`, nil, time.Time{}, ErrTelemetryBadTS},
		{"ts too old", `{"ts":12,"v":1}`, nil, time.Time{}, ErrTelemetryBadTS},
		{"only ts", `{"ts":"2026-11-26T03:00:00Z"}`, nil, time.Time{}, ErrTelemetryEmpty},
		{"no metrics", `{}`, nil, time.Time{}, ErrTelemetryEmpty},
		{"deep nesting", strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000), nil, time.Time{}, ErrTelemetryBadValue},
		{"1 MiB nesting", strings.Repeat("[", 1<<20), nil, time.Time{}, ErrTelemetryTooLarge},
		{"too many", manyMetrics(MaxTelemetryMetrics + 1), nil, time.Time{}, ErrTelemetryTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseTelemetry([]byte(tc.in))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !s.TS.Equal(tc.wantTS) {
				t.Errorf("ts = %v, want %v", s.TS, tc.wantTS)
			}
			var got map[string]any
			if err := json.Unmarshal(s.JSON, &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("values = %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			if s.N != len(tc.want) {
				t.Errorf("N = %d", s.N)
			}
		})
	}
}

func manyMetrics(n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"m` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `_` + strconv.Itoa(i) + `":1`)
	}
	b.WriteString("}")
	return b.String()
}

// FuzzParseTelemetry checks the parser against encoding/json: whatever it
// accepts is a JSON object that encoding/json reads to the same metrics,
// and its output is JSON again.
func FuzzParseTelemetry(f *testing.F) {
	for _, s := range []string{`{"temp":21.5}`, `{"ts":1795662000000,"a":true,"b":"x"}`, `[]`, `{"v":{"a":[1]}}`, `{"ts":"2026-11-26T03:00:00.5+01:00","v":-0.0}`, `{"a\u00e9":"\n"}`,
		`{"AM2301":{"Temperature":22.1,"Humidity":45.2},"TempUnit":"C"}`, `{"a.b":1,"a":{"b":2}}`, `{"a":{"b":{"c":{}}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := ParseTelemetry(in)
		// The shared parse says the same, and shares the payload only
		// when it is the output.
		sh, shErr := ParseTelemetryShared(in)
		if (err == nil) != (shErr == nil) || string(sh.JSON) != string(s.JSON) || sh.N != s.N || !sh.TS.Equal(s.TS) {
			t.Fatalf("%q: shared parse %q %v, parse %q %v", in, sh.JSON, shErr, s.JSON, err)
		}
		// Both hash the keys they give as keysHash does, which the
		// metric-name check's memo is matched by.
		if err == nil && (s.keys != keysHash(s.JSON) || sh.keys != s.keys) {
			t.Fatalf("%q: keys hashed %x (shared %x), keysHash %x", in, s.keys, sh.keys, keysHash(s.JSON))
		}
		if len(s.JSON) > 0 && &s.JSON[0] == &in[0] {
			t.Fatalf("%q: ParseTelemetry shares the payload", in)
		}
		if err == nil && (&sh.JSON[0] == &in[0]) != (string(sh.JSON) == string(in)) {
			t.Fatalf("%q: shared %v, output %q", in, &sh.JSON[0] == &in[0], sh.JSON)
		}
		if err != nil {
			if RejectReason(err) == "" {
				t.Fatalf("no reason for %v", err)
			}
			return
		}
		var nested map[string]any
		if err := json.Unmarshal(in, &nested); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", in, err)
		}
		delete(nested, "ts")
		orig := map[string]any{}
		flattenRef(orig, "", nested)
		back := s.Values()
		if len(back) != s.N || len(back) != len(orig) || s.N == 0 || s.N > MaxTelemetryMetrics {
			t.Fatalf("%q: output %q has %d members, N %d, input %d", in, s.JSON, len(back), s.N, len(orig))
		}
		for k, v := range orig {
			switch v.(type) {
			case float64, bool, string:
			default:
				t.Fatalf("%q: accepted %s of type %T", in, k, v)
			}
			if back[k] != v {
				t.Fatalf("%q: %s = %v, encoding/json says %v", in, k, back[k], v)
			}
		}
		var again map[string]json.RawMessage
		if err := json.Unmarshal(s.JSON, &again); err != nil {
			t.Fatalf("output %q is not JSON: %v", s.JSON, err)
		}
	})
}

// flattenRef is the reference flattening: nested objects' members get
// their parents' names joined with dots.
func flattenRef(out map[string]any, prefix string, m map[string]any) {
	for k, v := range m {
		if prefix != "" {
			k = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			flattenRef(out, k, sub)
			continue
		}
		out[k] = v
	}
}

func TestTelemetryValue(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     float64
		err      error
	}{
		{"temperature", "21.5", 21.5, nil},
		{"spaces", " -3e2\n", -300, nil},
		{"zero", "0", 0, nil},
		{"", "1", 0, ErrTelemetryBadValue},
		{"v", "on", 0, ErrTelemetryNotObject},
		{"v", `"1"`, 0, ErrTelemetryNotObject},
		{"v", "1 2", 0, ErrTelemetryNotObject},
		{"v", "1e999", 0, ErrTelemetryBadValue},
		{"v", "01", 0, ErrTelemetryNotObject},
		{"v", "", 0, ErrTelemetryNotObject},
		{"v", "NaN", 0, ErrTelemetryNotObject},
		{"v", "{\"a\":1}", 0, ErrTelemetryNotObject},
		{"quo\"te", "7", 7, nil},
	} {
		s, err := ParseTelemetryValue(tc.name, []byte(tc.in))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%q %q: err %v, want %v", tc.name, tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q %q: %v", tc.name, tc.in, err)
			continue
		}
		if v := s.Values(); len(v) != 1 || v[tc.name] != tc.want || s.N != 1 {
			t.Errorf("%q %q: %v (N %d)", tc.name, tc.in, v, s.N)
		}
	}
}

// FuzzParseTelemetryValue: a bare value is accepted only when it is one
// finite JSON number, and comes out as {name: that number}.
func FuzzParseTelemetryValue(f *testing.F) {
	for _, s := range []string{"21.5", "-0", "1e3", " 7 ", "x", "1e999", `"1"`} {
		f.Add("temp", []byte(s))
	}
	f.Fuzz(func(t *testing.T, name string, in []byte) {
		s, err := ParseTelemetryValue(name, in)
		if err != nil {
			if RejectReason(err) == "" {
				t.Fatalf("no reason for %v", err)
			}
			return
		}
		var v float64
		if err := json.Unmarshal(in, &v); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses as a number: %v", in, err)
		}
		var back map[string]float64
		if err := json.Unmarshal(s.JSON, &back); err != nil {
			t.Fatalf("output %q is not JSON: %v", s.JSON, err)
		}
		if len(back) != 1 || back[name] != v {
			t.Fatalf("%q %q: output %q", name, in, s.JSON)
		}
	})
}

// TestTelemetryParseShared: a compact payload is the sample's JSON
// itself; any other comes back compacted in a buffer of its own, and
// ParseTelemetry never shares.
func TestTelemetryParseShared(t *testing.T) {
	for in, shared := range map[string]bool{
		`{"temp":21.5,"on":true,"fw":"1.2.3"}`: true,
		`{"a\u00e9":"x\n"}`:                    true,
		`{"temp": 21.5}`:                       false,
		`{"temp":21.5,"ts":1795662000000}`:     false,
		`{"a":{"b":1}}`:                        false,
		` {"temp":21.5}`:                       false,
	} {
		b := []byte(in)
		s, err := ParseTelemetryShared(b)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := &s.JSON[0] == &b[0]; got != shared || cap(s.JSON) != len(s.JSON) && got {
			t.Errorf("%s: shared %v, want %v", in, got, shared)
		}
		p, err := ParseTelemetry(b)
		if err != nil || &p.JSON[0] == &b[0] || string(p.JSON) != string(s.JSON) {
			t.Errorf("%s: ParseTelemetry %q %v", in, p.JSON, err)
		}
	}
	// The pooled output buffer is not the sample's.
	a, _ := ParseTelemetry([]byte(`{"a": 1}`))
	b, _ := ParseTelemetry([]byte(`{"b": 2}`))
	if string(a.JSON) != `{"a":1}` || string(b.JSON) != `{"b":2}` {
		t.Errorf("samples share memory: %s %s", a.JSON, b.JSON)
	}
}

// TestTelemetryParseReusesState: the parser's pooled state carries
// nothing from one payload to the next (names, nested objects, ts).
func TestTelemetryParseReusesState(t *testing.T) {
	big := `{"ts":1795662000000,"o":{"p":1},` + strings.TrimPrefix(manyMetrics(40), "{")
	for range 3 {
		for _, in := range []string{big, `{"o":{"p":2}}`, `{"m1":1,"o.p":3}`, `{"ts":1795662000001,"x":1}`} {
			s, err := ParseTelemetry([]byte(in))
			if err != nil {
				t.Fatalf("%.60s: %v", in, err)
			}
			if in == `{"o":{"p":2}}` && (!s.TS.IsZero() || string(s.JSON) != `{"o.p":2}`) {
				t.Fatalf("%s: ts %v, %s", in, s.TS, s.JSON)
			}
		}
	}
}

// TestTelemetryParseCompact: the shared parse's shortcut for compact
// objects refuses what the full parse refuses, with the same reason, and
// accepts the rest unchanged.
func TestTelemetryParseCompact(t *testing.T) {
	long := strings.Repeat("n", MaxMetricName+1)
	for _, in := range []string{
		`{"a":1,"a":2}`, `{"":1}`, `{"` + long + `":1}`, "{\"a\x7f\":1}", "{\"a\x01\":1}", `{"a":"` + strings.Repeat("x", MaxMetricString+1) + `"}`,
		"{\"a\":\"\x7f\"}", `{"a":01}`, `{"a":1e999}`, `{"a":-}`, `{"a":null}`, `{"a":[1]}`, `{"a":1}x`, `{"a":1,}`, `{}`, `{"a":tru}`, `{"a":1`,
		`{"a":1,"b":-2.5e3,"c":true,"d":false,"e":"on"}`, `{"ts":1795662000000}`, strings.TrimSuffix(manyMetrics(17), "}") + `,"m1":1}`, manyMetrics(17),
	} {
		s, err := ParseTelemetry([]byte(in))
		sh, shErr := ParseTelemetryShared([]byte(in))
		if (err == nil) != (shErr == nil) || err != nil && RejectReason(err) != RejectReason(shErr) || string(s.JSON) != string(sh.JSON) || s.N != sh.N {
			t.Errorf("%.60s: shared %q %v, full %q %v", in, sh.JSON, shErr, s.JSON, err)
		}
	}
}
