package dashboard

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
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
	view := e.tokens["viewer"]
	const n = 700
	base, text := addBigPoints(t, e, "big-1", n)

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

// addBigPoints registers device id and gives it n points a second apart
// from an hour ago (base), each as large as telemetry allows: a number
// "n", i for the i-th point, and 255 strings m000 to m254, each text (230
// bytes): 62 KB of JSON, 68 KB of CSV.
func addBigPoints(t *testing.T, e *dataEnv, id string, n int) (base time.Time, text string) {
	t.Helper()
	e.createDevice(devices.NewDevice{ID: id})
	text = strings.Repeat("x", 230)
	base = time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
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
		for !e.tel.Add(id, s, time.Now()) {
			if err := e.tel.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return base, text
}

// TestTelemetryCSVBounded: the CSV form of TestTelemetryAnswerBounded.
// 700 points of 68 KB would be 47 MB of CSV: the answer stops after the
// first point past 32 MiB, on a whole point, parses as CSV, and its
// trailers say it is truncated and from when to go on; a query from there
// answers the rest, with the trailers declared and empty, as in an answer
// that fits.
func TestTelemetryCSVBounded(t *testing.T) {
	e := newDataEnv(t)
	view := e.tokens["viewer"]
	const n = 700
	base, text := addBigPoints(t, e, "big-1", n)
	metrics := devices.MaxTelemetryMetrics
	get := func(from string) (rows [][]string, size int, truncated, next string) {
		t.Helper()
		q := "/devices/big-1/telemetry?format=csv&limit=10000&from=" + url.QueryEscape(from) +
			"&to=" + url.QueryEscape(base.Add(time.Hour).Format(time.RFC3339Nano))
		res, body := e.do("GET", q, view, nil)
		e.mustStatus(res, body, 200)
		for _, k := range []string{"X-Tether-Truncated", "X-Tether-Next-From"} {
			if _, ok := res.Trailer[k]; !ok {
				t.Errorf("trailer %s is not declared", k)
			}
		}
		rows, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatalf("the answer (%d bytes) does not parse as CSV: %v", len(body), err)
		}
		if len(rows) == 0 || !slices.Equal(rows[0], []string{"ts", "metric", "value"}) {
			t.Fatalf("the answer does not begin with its header row")
		}
		return rows[1:], len(body), res.Trailer.Get("X-Tether-Truncated"), res.Trailer.Get("X-Tether-Next-From")
	}
	// check reports how many whole points rows holds, from point first on,
	// each with its metrics in order.
	check := func(rows [][]string, first int) int {
		t.Helper()
		if len(rows)%metrics != 0 {
			t.Fatalf("%d rows, not whole points of %d", len(rows), metrics)
		}
		for i, row := range rows {
			k := first + i/metrics
			ts := base.Add(time.Duration(k) * time.Second).Format(csvTime)
			want := []string{ts, fmt.Sprintf("m%03d", i%metrics), text}
			if i%metrics == metrics-1 {
				want = []string{ts, "n", strconv.Itoa(k)}
			}
			if !slices.Equal(row, want) {
				t.Fatalf("row %d: %.40q, want %.40q", i, row, want)
			}
		}
		return len(rows) / metrics
	}
	rows, size, truncated, next := get(base.Format(time.RFC3339Nano))
	k := check(rows, 0)
	t.Logf("first answer: %d points, %d bytes, trailers %q %q", k, size, truncated, next)
	if size > maxPointsAnswer+(64+4)<<10 {
		t.Errorf("the answer is %d bytes, want at most 32 MiB and a point", size)
	}
	if k < 400 || k >= n {
		t.Fatalf("%d points in the first answer", k)
	}
	if want := base.Add(time.Duration(k) * time.Second).Format(csvTime); truncated != "true" || next != want {
		t.Fatalf("trailers X-Tether-Truncated %q, X-Tether-Next-From %q; want true, %s", truncated, next, want)
	}
	rows, _, truncated, next = get(next)
	if got := check(rows, k); got != n-k {
		t.Errorf("the rest: %d points, want %d", got, n-k)
	}
	if truncated != "" || next != "" {
		t.Errorf("the rest has trailers X-Tether-Truncated %q, X-Tether-Next-From %q", truncated, next)
	}
}

// TestTelemetryWidestRange: from and to at the ends of Unix milliseconds
// (as FuzzAPI sent them) cover every point: the points come back; buckets
// over that range are far too many and refused. The store's arithmetic
// wrapped around there: no points, and any step was taken, as "0
// buckets", answered with none.
func TestTelemetryWidestRange(t *testing.T) {
	e := newDataEnv(t)
	view := e.tokens["viewer"]
	e.createDevice(devices.NewDevice{ID: "wide-1"})
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Minute).UTC()
	for i := range 3 {
		s, err := devices.ParseTelemetry(fmt.Appendf(nil, `{"temp":%d}`, 20+i))
		if err != nil {
			t.Fatal(err)
		}
		s.TS = base.Add(time.Duration(i) * time.Minute)
		e.tel.Add("wide-1", s, time.Now())
	}
	if err := e.tel.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	const wide = "/devices/wide-1/telemetry?from=-9223372036854775808&to=9223372036854775807"
	res, body := e.do("GET", wide, view, nil)
	e.mustStatus(res, body, 200)
	if got := decode[struct{ Points []devices.Point }](t, body); len(got.Points) != 3 || !got.Points[0].TS.Equal(base) {
		t.Fatalf("points of the widest range: %s", body)
	}
	for _, q := range []string{"&step=1ms", "&step=1h", "&step=1ms&format=csv"} {
		res, body = e.do("GET", wide+q, view, nil)
		e.mustStatus(res, body, 400)
		if !strings.Contains(string(body), "buckets") {
			t.Fatalf("%s: %s", q, body)
		}
	}
}
