package dashboard

import (
	"encoding/csv"
	"errors"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices"
)

// csvTime is how CSV writes a timestamp: RFC 3339 in UTC, milliseconds.
const csvTime = "2006-01-02T15:04:05.000Z07:00"

// wantsCSV reads format= (json or csv) and, without it, the Accept header.
func wantsCSV(r *http.Request, q url.Values) (bool, error) {
	switch q.Get("format") {
	case "csv":
		return true, nil
	case "json":
		return false, nil
	case "":
	default:
		return false, badRequest(codeInvalid, "format must be json or csv")
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/csv" {
			return true, nil
		}
	}
	return false, nil
}

// csvHeader starts a CSV response.
func csvHeader(w http.ResponseWriter, id, kind string) *csv.Writer {
	h := w.Header()
	h.Set("Content-Type", "text/csv; charset=utf-8")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": id + "-" + kind + ".csv"}))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	return csv.NewWriter(w)
}

// formulaStart holds the bytes with which a spreadsheet takes a cell for
// a formula.
const formulaStart = "=+-@\t\r"

// cellBreak holds the bytes after which a spreadsheet reading this CSV
// with another separator starts a cell: ';' and tab (list separators of
// their own, ';' the default in much of Europe), and CR and LF (a row).
const cellBreak = ";\t\r\n"

// csvText is a device's string as a CSV cell: where a spreadsheet would
// see a cell that starts a formula, a quote goes first. That is at the
// start (OWASP's CSV injection guidance), and after each ';', tab, CR or
// LF. Quoting the field (RFC 4180) does not do it, as seen in LibreOffice
// Calc 7.4 (Debian 12), converting crafted files headless
// (soffice --infilter="CSV:59,34,76,1,,0,false,false,false,false,false,-1,true"
// --convert-to fods, and with 44, and 9, for the separator):
//   - read with ',' (as written), the cells a;=1+1 and "b;=2+2" are
//     kept whole, as text; =7+7 alone is a formula (14; also with no
//     filter options: it evaluates formulas by default);
//   - read with ';', the row 2026-…,"b;=2+2",6 is the cells 2026-…,"b and
//     =2+2",6, a formula (Err:509 here, but h;=HYPERLINK("http://x";"y");z
//     made a working HYPERLINK): a quote opens a quoted field only at the
//     start of a cell, and there it is ts,"b. The same with tab;
//   - read with ';', a quoted field holding a line break, 2026-…,"e⏎=2+2",7,
//     is two rows, the second starting with the formula =2+2",7;
//   - read with ';', g;'=9+9 is the cell '=9+9,13: text, no formula.
//
// So the quote stays, visible where the file is read with ','
// (a;'=1+1), since nothing else keeps the formula out where it is read
// with ';'.
func csvText(s string) string {
	guard := func(i int) bool {
		return i < len(s) && strings.IndexByte(formulaStart, s[i]) >= 0 && (i == 0 || strings.IndexByte(cellBreak, s[i-1]) >= 0)
	}
	n := 0
	for i := range len(s) {
		if guard(i) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+n)
	for i := range len(s) {
		if guard(i) {
			b = append(b, '\'')
		}
		b = append(b, s[i])
	}
	return string(b)
}

func csvFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// The trailers of a CSV answer of points that stopped at maxPointsAnswer
// (CSV has no place of its own to say so).
const (
	trailerTruncated = "X-Tether-Truncated"
	trailerNextFrom  = "X-Tether-Next-From"
)

// writePointsCSV streams points as rows of ts, metric, value, a row per
// metric of each point (in time order, metrics by name), flushing as it
// goes. Like writePoints it stops at the first point once about
// maxPointsAnswer bytes are written (give or take the CSV writer's 4 KiB
// buffer): the answer then ends on a whole row, and its trailers, declared
// in every answer and set only in one cut short, say X-Tether-Truncated:
// true and X-Tether-Next-From, that point's time, from which a query goes
// on.
func (a *API) writePointsCSV(w http.ResponseWriter, r *http.Request, id string, from, to time.Time, limit int) error {
	var cw *csv.Writer
	cnt := &countWriter{w: w}
	begin := func() {
		w.Header().Set("Trailer", trailerTruncated+", "+trailerNextFrom)
		csvHeader(w, id, "telemetry")
		cw = csv.NewWriter(cnt)
		cw.Write([]string{"ts", "metric", "value"})
	}
	// Through the wrappers (statusWriter's Unwrap): w itself is no
	// http.Flusher.
	rc := http.NewResponseController(w)
	rows := 0
	var next time.Time
	err := a.telemetry.EachPoint(r.Context(), id, from, to, limit, func(p devices.Point) error {
		if cw == nil {
			begin()
		}
		if cnt.n >= maxPointsAnswer {
			next = p.TS
			return errAnswerFull
		}
		ts := p.TS.UTC().Format(csvTime)
		for _, k := range slices.Sorted(maps.Keys(p.Values)) {
			var v string
			switch x := p.Values[k].(type) {
			case float64:
				v = csvFloat(x)
			case bool:
				v = strconv.FormatBool(x)
			case string:
				v = csvText(x)
			}
			if err := cw.Write([]string{ts, csvText(k), v}); err != nil {
				return err
			}
			if rows++; rows%1000 == 0 {
				cw.Flush()
				_ = rc.Flush()
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, errAnswerFull):
		cw.Flush()
		h := w.Header()
		h.Set(trailerTruncated, "true")
		h.Set(trailerNextFrom, next.UTC().Format(csvTime))
		return nil
	case cw == nil && err != nil:
		return registryError(err, "device")
	case cw == nil:
		begin()
	case err != nil:
		// The response has begun: all that can be done is to stop it.
		a.log.Warn("telemetry csv: stopped", "device", id, "error", err)
	}
	cw.Flush()
	return nil
}

// writeBucketsCSV writes buckets as rows of ts, metric, min, avg, max,
// count.
func writeBucketsCSV(w http.ResponseWriter, id string, bs []devices.Bucket) {
	cw := csvHeader(w, id, "telemetry")
	cw.Write([]string{"ts", "metric", "min", "avg", "max", "count"})
	for _, b := range bs {
		ts := b.TS.UTC().Format(csvTime)
		for _, k := range slices.Sorted(maps.Keys(b.Min)) {
			cw.Write([]string{ts, csvText(k), csvFloat(b.Min[k]), csvFloat(b.Avg[k]), csvFloat(b.Max[k]), strconv.FormatInt(b.Count[k], 10)})
		}
	}
	cw.Flush()
}
