package devices

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Limits of one telemetry payload. A payload beyond them is rejected (and
// counted), never truncated.
const (
	MaxTelemetryPayload = 64 << 10 // bytes
	MaxTelemetryMetrics = 256      // metrics in one payload
	MaxMetricName       = 128      // bytes
	MaxMetricString     = 256      // bytes of a string value
)

// Reasons a payload is rejected; they label the rejected-payload metric.
var (
	ErrTelemetryNotObject = errors.New("telemetry: payload is not a JSON object")
	ErrTelemetryTooLarge  = errors.New("telemetry: payload too large")
	ErrTelemetryBadValue  = errors.New("telemetry: bad metric")
	ErrTelemetryBadTS     = errors.New("telemetry: bad ts")
	ErrTelemetryEmpty     = errors.New("telemetry: no metrics")
)

// Earliest and latest timestamps a payload's "ts" may carry.
var (
	minTelemetryTS = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTelemetryTS = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
)

// Sample is one parsed telemetry payload.
type Sample struct {
	// TS is the payload's "ts", or the zero time when it had none.
	TS time.Time
	// JSON is the metrics as a compact JSON object, without ts, members in
	// the payload's order, each key and value as the payload spelled it.
	JSON []byte
	// N is the number of metrics.
	N int
}

// Values decodes the metrics: each a float64, a bool or a string.
func (s Sample) Values() map[string]any {
	m := make(map[string]any, s.N)
	_ = json.Unmarshal(s.JSON, &m)
	return m
}

// ParseTelemetry parses a payload published on devices/{id}/telemetry: a
// JSON object whose members are metrics (finite numbers, booleans or short
// strings) and optionally "ts", an RFC 3339 string or Unix milliseconds.
// Arrays, nested objects, nulls, duplicate names and anything that is not
// a JSON object are rejected with one of the ErrTelemetry* errors (wrapped
// with detail).
//
// It is a single pass over the bytes without reflection, since it runs on
// the publisher's goroutine for every telemetry message; nesting is refused
// at its first byte, so no input makes it recurse or allocate much.
func ParseTelemetry(payload []byte) (Sample, error) {
	if len(payload) > MaxTelemetryPayload {
		return Sample{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrTelemetryTooLarge, len(payload), MaxTelemetryPayload)
	}
	p := parser{b: payload}
	p.ws()
	if !p.eat('{') {
		return Sample{}, ErrTelemetryNotObject
	}
	var s Sample
	out := make([]byte, 0, len(payload))
	out = append(out, '{')
	var nameBuf [16][]byte
	names := nameBuf[:0] // decoded metric names, to refuse duplicates
	p.ws()
	if !p.eat('}') {
		for {
			p.ws()
			kStart := p.i
			key, err := p.str()
			if err != nil {
				return Sample{}, err
			}
			rawKey := p.b[kStart:p.i]
			p.ws()
			if !p.eat(':') {
				return Sample{}, p.syntax("':' after a name")
			}
			p.ws()
			vStart := p.i
			if string(key) == "ts" {
				if !s.TS.IsZero() {
					return Sample{}, fmt.Errorf("%w: given twice", ErrTelemetryBadTS)
				}
				if s.TS, err = p.ts(); err != nil {
					return Sample{}, err
				}
			} else {
				if err := checkName(key); err != nil {
					return Sample{}, err
				}
				for _, n := range names {
					if string(n) == string(key) {
						return Sample{}, fmt.Errorf("%w: %.40q given twice", ErrTelemetryBadValue, key)
					}
				}
				if len(names) == MaxTelemetryMetrics {
					return Sample{}, fmt.Errorf("%w: more than %d metrics", ErrTelemetryTooLarge, MaxTelemetryMetrics)
				}
				names = append(names, key)
				if err := p.metric(key); err != nil {
					return Sample{}, err
				}
				if len(out) > 1 {
					out = append(out, ',')
				}
				out = append(out, rawKey...)
				out = append(out, ':')
				out = append(out, p.b[vStart:p.i]...)
			}
			p.ws()
			if p.eat('}') {
				break
			}
			if !p.eat(',') {
				return Sample{}, p.syntax("',' or '}'")
			}
		}
	}
	p.ws()
	if p.i != len(p.b) {
		return Sample{}, p.syntax("the end after the object")
	}
	if len(names) == 0 {
		return Sample{}, ErrTelemetryEmpty
	}
	s.JSON = append(out, '}')
	s.N = len(names)
	return s, nil
}

// parser is a position in a payload.
type parser struct {
	b []byte
	i int
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\r', '\n':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) syntax(want string) error {
	return fmt.Errorf("%w: want %s at byte %d", ErrTelemetryNotObject, want, p.i)
}

// str reads a JSON string and returns it decoded: the payload's own bytes
// when it has no escapes.
func (p *parser) str() ([]byte, error) {
	if !p.eat('"') {
		return nil, p.syntax("a string")
	}
	start, escaped := p.i, false
	for {
		if p.i >= len(p.b) {
			return nil, p.syntax("the end of a string")
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			raw := p.b[start:p.i]
			p.i++
			if !utf8.Valid(raw) {
				return nil, fmt.Errorf("%w: a string is not UTF-8", ErrTelemetryNotObject)
			}
			if !escaped {
				return raw, nil
			}
			var s string
			if err := json.Unmarshal(p.b[start-1:p.i], &s); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrTelemetryNotObject, err)
			}
			return []byte(s), nil
		case c == '\\':
			escaped = true
			p.i += 2
		case c < 0x20:
			return nil, p.syntax("no control characters in a string")
		default:
			p.i++
		}
	}
}

// number reads a JSON number (RFC 8259 grammar) and checks that it is
// finite; it returns its value when need is set.
func (p *parser) number(need bool) (float64, error) {
	start := p.i
	p.eat('-')
	switch {
	case p.eat('0'):
	case p.i < len(p.b) && p.b[p.i] >= '1' && p.b[p.i] <= '9':
		p.digits()
	default:
		return 0, p.syntax("a value")
	}
	if p.eat('.') {
		if p.digits() == 0 {
			return 0, p.syntax("digits after '.'")
		}
	}
	exp := false
	if p.eat('e') || p.eat('E') {
		exp = true
		if !p.eat('+') {
			p.eat('-')
		}
		if p.digits() == 0 {
			return 0, p.syntax("digits in the exponent")
		}
	}
	if !need && !exp && p.i-start <= 300 {
		return 0, nil // no exponent and few digits: finite; the value is not needed
	}
	f, err := strconv.ParseFloat(string(p.b[start:p.i]), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%w: %.40s is not a finite number", ErrTelemetryBadValue, p.b[start:p.i])
	}
	return f, nil
}

func (p *parser) digits() int {
	n := 0
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
		n++
	}
	return n
}

func (p *parser) literal(word string) bool {
	if len(p.b)-p.i >= len(word) && string(p.b[p.i:p.i+len(word)]) == word {
		p.i += len(word)
		return true
	}
	return false
}

// metric reads a metric's value: a number, a boolean or a short string.
func (p *parser) metric(name []byte) error {
	if p.i >= len(p.b) {
		return p.syntax("a value")
	}
	switch p.b[p.i] {
	case '"':
		s, err := p.str()
		if err != nil {
			return err
		}
		if len(s) > MaxMetricString {
			return fmt.Errorf("%w: %.40q: a string of %d bytes (at most %d)", ErrTelemetryBadValue, name, len(s), MaxMetricString)
		}
		return nil
	case 't':
		if p.literal("true") {
			return nil
		}
	case 'f':
		if p.literal("false") {
			return nil
		}
	case 'n':
		if p.literal("null") {
			return fmt.Errorf("%w: %.40q: null", ErrTelemetryBadValue, name)
		}
	case '[':
		return fmt.Errorf("%w: %.40q: an array", ErrTelemetryBadValue, name)
	case '{':
		return fmt.Errorf("%w: %.40q: an object", ErrTelemetryBadValue, name)
	default:
		_, err := p.number(false)
		return err
	}
	return p.syntax("a value")
}

// ts reads "ts": an RFC 3339 string or Unix milliseconds.
func (p *parser) ts() (time.Time, error) {
	var t time.Time
	if p.i >= len(p.b) {
		return t, p.syntax("a value")
	}
	switch c := p.b[p.i]; {
	case c == '"':
		s, err := p.str()
		if err != nil {
			return t, err
		}
		if t, err = time.Parse(time.RFC3339Nano, string(s)); err != nil {
			return t, fmt.Errorf("%w: %.40q is not RFC 3339", ErrTelemetryBadTS, s)
		}
	case c == '-' || c >= '0' && c <= '9':
		f, err := p.number(true)
		if err != nil {
			return t, fmt.Errorf("%w: not Unix milliseconds", ErrTelemetryBadTS)
		}
		if f < float64(minTelemetryTS.UnixMilli()) || f >= float64(maxTelemetryTS.UnixMilli()) {
			return t, fmt.Errorf("%w: %.0f ms is not between 2000 and 3000", ErrTelemetryBadTS, f)
		}
		t = time.UnixMilli(int64(f))
	default:
		return t, fmt.Errorf("%w: neither RFC 3339 nor Unix milliseconds", ErrTelemetryBadTS)
	}
	if t.Before(minTelemetryTS) || !t.Before(maxTelemetryTS) {
		return time.Time{}, fmt.Errorf("%w: %s is not between 2000 and 3000", ErrTelemetryBadTS, t.Format(time.RFC3339))
	}
	return t.UTC(), nil
}

// checkName checks a metric name: 1 to MaxMetricName bytes, no control
// characters.
func checkName(k []byte) error {
	if len(k) == 0 || len(k) > MaxMetricName {
		return fmt.Errorf("%w: metric name %.40q: must be 1 to %d bytes", ErrTelemetryBadValue, k, MaxMetricName)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] == 0x7f {
			return fmt.Errorf("%w: metric name %.40q: control character", ErrTelemetryBadValue, k)
		}
	}
	return nil
}

// rejectReason names err's kind for the rejected-payload metric.
func rejectReason(err error) string {
	switch {
	case errors.Is(err, ErrTelemetryNotObject):
		return "not_object"
	case errors.Is(err, ErrTelemetryTooLarge):
		return "too_large"
	case errors.Is(err, ErrTelemetryBadTS):
		return "bad_ts"
	case errors.Is(err, ErrTelemetryEmpty):
		return "empty"
	}
	return "bad_value"
}
