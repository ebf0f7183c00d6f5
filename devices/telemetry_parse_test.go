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
		{"object value", `{"v":{"a":1}}`, nil, time.Time{}, ErrTelemetryBadValue},
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
	for _, s := range []string{`{"temp":21.5}`, `{"ts":1795662000000,"a":true,"b":"x"}`, `[]`, `{"v":{"a":[1]}}`, `{"ts":"2026-11-26T03:00:00.5+01:00","v":-0.0}`, `{"a\u00e9":"\n"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := ParseTelemetry(in)
		if err != nil {
			if rejectReason(err) == "" {
				t.Fatalf("no reason for %v", err)
			}
			return
		}
		var orig map[string]any
		if err := json.Unmarshal(in, &orig); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", in, err)
		}
		delete(orig, "ts")
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
