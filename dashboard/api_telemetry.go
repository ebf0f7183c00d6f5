package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tether-iot/tether/devices"
)

// Telemetry query defaults.
const (
	defaultTelemetryRange = time.Hour
	defaultTelemetryLimit = 1000
	// maxPointsAnswer is about the most bytes of points one JSON answer
	// holds (10,000 points of 64 KiB would be 640 MB): the answer ends at
	// the first point past it, and says so (writePoints).
	maxPointsAnswer = 32 << 20
)

// unavailable is a 503 for a part of the API that is not wired in.
func unavailable(what string) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: what + " is not available"}
}

type bucketsResponse struct {
	Buckets []devices.Bucket `json:"buckets"`
}

// getTelemetry: GET /devices/{id}/telemetry?from=&to=&limit=&step=&format=
// from and to are RFC 3339 or Unix milliseconds (default: the last hour);
// limit 1..10000 (default 1000); step a duration such as 1m (or seconds),
// which returns per-bucket min/avg/max/count instead of points. format=csv
// (or Accept: text/csv) returns CSV instead of JSON (telemetry_csv.go).
func (a *API) getTelemetry(w http.ResponseWriter, r *http.Request) error {
	if a.telemetry == nil {
		return unavailable("telemetry history")
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	q, err := query(r, "from", "to", "limit", "step", "format")
	if err != nil {
		return err
	}
	csv, err := wantsCSV(r, q)
	if err != nil {
		return err
	}
	to, err := timeParam(q, "to", a.now())
	if err != nil {
		return err
	}
	from, err := timeParam(q, "from", to.Add(-defaultTelemetryRange))
	if err != nil {
		return err
	}
	if to.Before(from) {
		return badRequest(codeInvalid, "to is before from")
	}
	if _, err := a.reg.Device(r.Context(), id); err != nil {
		return registryError(err, "device")
	}
	if s := q.Get("step"); s != "" {
		if q.Has("limit") {
			return badRequest(codeInvalid, "limit and step do not go together")
		}
		step, err := time.ParseDuration(s)
		if err != nil {
			n, nerr := strconv.ParseFloat(s, 64)
			if nerr != nil {
				return badRequest(codeInvalid, "step must be a duration such as 1m or 30s, or seconds")
			}
			step = time.Duration(n * float64(time.Second))
		}
		bs, err := a.telemetry.Buckets(r.Context(), id, from, to, step)
		if err != nil {
			return registryError(err, "device")
		}
		if csv {
			writeBucketsCSV(w, id, bs)
			return nil
		}
		return writeJSON(w, http.StatusOK, bucketsResponse{Buckets: bs})
	}
	limit := defaultTelemetryLimit
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > devices.MaxTelemetryPoints {
			return badRequest(codeInvalid, "limit must be a whole number from 1 to %d", devices.MaxTelemetryPoints)
		}
	}
	if csv {
		return a.writePointsCSV(w, r, id, from, to, limit)
	}
	return a.writePoints(w, r, id, from, to, limit)
}

// writePoints streams {"points":[...]} as the store decodes the points,
// so that an answer of 10,000 points of up to 64 KiB each is never held
// whole, as points and again as their encoding. An answer that reaches
// maxPointsAnswer bytes ends before the next point, with "truncated":
// true and "next_from", that point's time: a query from there goes on
// (and answers again the points of that millisecond this one held). A
// failure once the answer has begun cuts it short: JSON that does not
// parse, never an answer that looks complete.
func (a *API) writePoints(w http.ResponseWriter, r *http.Request, id string, from, to time.Time, limit int) error {
	var ew *exportWriter
	cw := &countWriter{w: w}
	begin := func() {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		ew = &exportWriter{w: cw, enc: json.NewEncoder(cw)}
		ew.raw(`{"points":[`)
	}
	var next time.Time
	err := a.telemetry.EachPoint(r.Context(), id, from, to, limit, func(p devices.Point) error {
		if ew == nil {
			begin()
		}
		if cw.n >= maxPointsAnswer {
			next = p.TS
			return errAnswerFull
		}
		ew.row(p)
		return ew.err
	})
	switch {
	case errors.Is(err, errAnswerFull):
		ts, _ := next.MarshalJSON()
		ew.raw(`],"truncated":true,"next_from":` + string(ts) + "}\n")
		return ew.err
	case err != nil && ew == nil:
		return registryError(err, "device")
	case err != nil:
		return fmt.Errorf("telemetry %s: %w", id, err)
	case ew == nil:
		begin()
	}
	ew.raw("]}\n")
	return ew.err
}

// errAnswerFull stops an answer that holds as much as it may.
var errAnswerFull = errors.New("answer full")

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// timeParam reads an RFC 3339 or Unix-milliseconds query parameter.
func timeParam(q url.Values, name string, def time.Time) (time.Time, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	return time.Time{}, badRequest(codeInvalid, "%s must be RFC 3339 (2026-01-02T15:04:05Z) or Unix milliseconds", name)
}
