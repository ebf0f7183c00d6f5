package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// TestTelemetryAnswerBounded: a device whose points are as large as
// telemetry allows (255 strings of 230 bytes and a number, 62 KB of JSON
// each). 700 of them would be a 43 MB answer: the answer stops at the
// first point past 32 MiB, parses, holds the earliest points in order,
// and says it is truncated and where to go on; a query from there
// answers the rest, and says nothing of truncation, like any answer that
// fits.
func TestTelemetryAnswerBounded(t *testing.T) {
	e := newDataEnv(t)
	e.createDevice(devices.NewDevice{ID: "big-1"})
	view := e.tokens["viewer"]
	const n = 700
	text := strings.Repeat("x", 230)
	base := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	for i := range n {
		var b strings.Builder
		fmt.Fprintf(&b, `{"n":%d`, i)
		for k := range devices.MaxTelemetryMetrics - 1 {
			fmt.Fprintf(&b, `,"m%03d":%q`, k, text)
		}
		b.WriteString("}")
		s, err := devices.ParseTelemetry([]byte(b.String()))
		if err != nil {
			t.Fatal(err)
		}
		s.TS = base.Add(time.Duration(i) * time.Second)
		for !e.tel.Add("big-1", s, time.Now()) {
			if err := e.tel.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	type answer struct {
		Points []struct {
			TS     time.Time      `json:"ts"`
			Values map[string]any `json:"values"`
		} `json:"points"`
		Truncated *bool      `json:"truncated"`
		NextFrom  *time.Time `json:"next_from"`
	}
	get := func(from time.Time) (answer, int) {
		t.Helper()
		q := fmt.Sprintf("/devices/big-1/telemetry?from=%s&to=%s&limit=10000",
			from.Format(time.RFC3339Nano), base.Add(time.Hour).Format(time.RFC3339Nano))
		res, body := e.do("GET", q, view, nil)
		e.mustStatus(res, body, 200)
		var a answer
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("the answer (%d bytes) does not parse: %v", len(body), err)
		}
		return a, len(body)
	}
	first, size := get(base)
	k := len(first.Points)
	t.Logf("first answer: %d points, %d bytes", k, size)
	if size > maxPointsAnswer+64<<10 {
		t.Errorf("the answer is %d bytes, want at most 32 MiB and a point", size)
	}
	if first.Truncated == nil || !*first.Truncated || first.NextFrom == nil {
		t.Fatalf("a truncated answer of %d points does not say so: truncated %v, next_from %v", k, first.Truncated, first.NextFrom)
	}
	if k < 500 || k >= n {
		t.Fatalf("%d points in the first answer", k)
	}
	for i, p := range first.Points {
		if p.Values["n"] != float64(i) || len(p.Values) != devices.MaxTelemetryMetrics || p.Values["m254"] != text {
			t.Fatalf("point %d: n %v, %d values", i, p.Values["n"], len(p.Values))
		}
	}
	if want := base.Add(time.Duration(k) * time.Second); !first.NextFrom.Equal(want) {
		t.Errorf("next_from %v, want the first point left out, %v", first.NextFrom, want)
	}
	rest, _ := get(*first.NextFrom)
	if rest.Truncated != nil || rest.NextFrom != nil {
		t.Errorf("the rest says truncated %v, next_from %v", rest.Truncated != nil, rest.NextFrom)
	}
	if len(rest.Points) != n-k || rest.Points[0].Values["n"] != float64(k) || rest.Points[len(rest.Points)-1].Values["n"] != float64(n-1) {
		t.Errorf("the rest: %d points, want %d from %d", len(rest.Points), n-k, k)
	}
}
