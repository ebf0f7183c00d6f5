package devices

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
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
	// ErrTelemetryNotOwn: a mapped topic (telemetry.topics) names a
	// device other than the one publishing.
	ErrTelemetryNotOwn = errors.New("telemetry: another device's topic")
)

// Earliest and latest timestamps a payload's "ts" may carry.
var (
	minTelemetryTS = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTelemetryTS = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
)

// MaxTelemetryAhead is how far ahead of the server's clock a payload's
// "ts" may be (CheckAhead): a device's clock set a little ahead, or local
// time sent as UTC, is taken. History is pruned by age, so a point
// stamped in 2999 would outlive telemetry.retention by a millennium: a
// device could fill the disk with history nothing prunes.
const MaxTelemetryAhead = 24 * time.Hour

// CheckAhead reports ErrTelemetryBadTS when s carries a "ts" more than
// MaxTelemetryAhead after now. It is the hook's check, apart from the
// parser, which reads no clock.
func (s Sample) CheckAhead(now time.Time) error {
	if !s.TS.IsZero() && s.TS.Sub(now) > MaxTelemetryAhead {
		return fmt.Errorf("%w: %s is more than 24 h ahead of the server's clock", ErrTelemetryBadTS, s.TS.Format(time.RFC3339))
	}
	return nil
}

// Sample is one parsed telemetry payload.
type Sample struct {
	// TS is the payload's "ts", or the zero time when it had none.
	TS time.Time
	// JSON is the metrics as a compact JSON object, without ts, members in
	// the payload's order, each value as the payload spelled it (and each
	// top-level name; nested ones are flattened with dots).
	JSON []byte
	// N is the number of metrics.
	N int
	// keys is keysHash(JSON), or 0 when not computed (a Sample made by
	// hand): the metric-name check knows a device's usual keys by it
	// without reading them again (metricNames.filterKeys).
	keys uint64
}

// Values decodes the metrics: each a float64, a bool or a string.
func (s Sample) Values() map[string]any {
	m := make(map[string]any, s.N)
	_ = json.Unmarshal(s.JSON, &m)
	return m
}

// MaxTelemetryDepth is how deep objects may nest in a telemetry payload
// (the top-level object is depth 1).
const MaxTelemetryDepth = 8

// ParseTelemetry parses a payload published on devices/{id}/telemetry: a
// JSON object whose members are metrics (finite numbers, booleans or short
// strings) and optionally "ts", an RFC 3339 string or Unix milliseconds.
// Nested objects are flattened with dots, as firmware such as Tasmota
// sends them: {"AM2301":{"Temperature":22.1}} is the metric
// "AM2301.Temperature" (SPEC §6). Arrays, nulls, nesting deeper than
// MaxTelemetryDepth, names given twice (after flattening) and anything
// that is not a JSON object are rejected with one of the ErrTelemetry*
// errors (wrapped with detail).
//
// It is a single pass over the bytes without reflection, since it runs on
// the publisher's goroutine for every telemetry message; its recursion is
// bounded by MaxTelemetryDepth, so no input makes it recurse or allocate
// much.
func ParseTelemetry(payload []byte) (Sample, error) { return parseTelemetry(payload, false) }

// ParseTelemetryShared is ParseTelemetry for a payload that nobody
// changes afterwards (an MQTT packet's own buffer): when the payload is
// already the compact object (no whitespace, no "ts", no nesting: what
// firmware usually sends), Sample.JSON is the payload itself, and parsing
// allocates nothing.
func ParseTelemetryShared(payload []byte) (Sample, error) { return parseTelemetry(payload, true) }

func parseTelemetry(payload []byte, shared bool) (Sample, error) {
	if len(payload) > MaxTelemetryPayload {
		return Sample{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrTelemetryTooLarge, len(payload), MaxTelemetryPayload)
	}
	if shared {
		if n, h, ok := compactObject(payload); ok {
			return Sample{JSON: payload[:len(payload):len(payload)], N: n, keys: h}, nil
		}
	}
	p := parser{b: payload}
	p.ws()
	if !p.eat('{') {
		return Sample{}, ErrTelemetryNotObject
	}
	f := getFlat()
	defer putFlat(f)
	f.out = append(f.out[:0], '{')
	if err := p.members(f, nil, 1); err != nil {
		return Sample{}, err
	}
	p.ws()
	if p.i != len(p.b) {
		return Sample{}, p.syntax("the end after the object")
	}
	if len(f.names) == 0 {
		return Sample{}, ErrTelemetryEmpty
	}
	f.out = append(f.out, '}')
	s := Sample{TS: f.ts, N: len(f.names), keys: keysHash(f.out)}
	if shared && string(f.out) == string(payload) {
		s.JSON = payload[:len(payload):len(payload)]
	} else {
		s.JSON = append(make([]byte, 0, len(f.out)), f.out...)
	}
	return s, nil
}

// compactObject is parseTelemetry's shortcut for a payload that is the
// compact object it would make of it, as firmware usually sends it: at
// most 16 metrics, no whitespace, no "ts", no nesting, ASCII names and
// strings without escapes. It returns the number of metrics; ok is false
// for any other payload, which parseTelemetry then reads in full (and
// refuses if it must): what compactObject accepts, parseTelemetry
// accepts and copies unchanged (FuzzParseTelemetry). h is keysHash(b),
// folded in as the names are read.
func compactObject(b []byte) (n int, h uint64, ok bool) {
	if len(b) < 2 || b[0] != '{' {
		return 0, 0, false
	}
	var kh keysHasher
	var names [16][]byte
	p := parser{b: b, i: 1}
	for {
		name, ok := p.asciiString(0x7f) // checkName refuses DEL too
		if !ok || len(name) == 0 || len(name) > MaxMetricName || string(name) == "ts" || n == len(names) {
			return 0, 0, false
		}
		for _, m := range names[:n] {
			if string(m) == string(name) {
				return 0, 0, false
			}
		}
		names[n] = name
		n++
		kh.add(name)
		if !p.eat(':') || p.i >= len(b) {
			return 0, 0, false
		}
		switch c := b[p.i]; {
		case c == '"':
			if s, ok := p.asciiString(0x80); !ok || len(s) > MaxMetricString {
				return 0, 0, false
			}
		case c == 't':
			if !p.literal("true") {
				return 0, 0, false
			}
		case c == 'f':
			if !p.literal("false") {
				return 0, 0, false
			}
		case c == '-' || c >= '0' && c <= '9':
			if _, err := p.number(false); err != nil {
				return 0, 0, false
			}
		default:
			return 0, 0, false
		}
		if p.eat('}') {
			return n, kh.sum(b), p.i == len(b)
		}
		if !p.eat(',') {
			return 0, 0, false
		}
	}
}

// asciiString reads a JSON string of bytes from 0x20 to below limit,
// without escapes, and returns its contents; ok is false for any other.
func (p *parser) asciiString(limit byte) (s []byte, ok bool) {
	if !p.eat('"') {
		return nil, false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return p.b[start : p.i-1], true
		case c < 0x20 || c >= limit || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// ParseTelemetryValue parses the payload of devices/{id}/telemetry/{metric}
// (or of a mapped topic): a bare JSON number, the one metric name.
func ParseTelemetryValue(name string, payload []byte) (Sample, error) {
	if len(payload) > MaxTelemetryPayload {
		return Sample{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrTelemetryTooLarge, len(payload), MaxTelemetryPayload)
	}
	if err := checkName([]byte(name)); err != nil {
		return Sample{}, err
	}
	if !utf8.ValidString(name) {
		return Sample{}, fmt.Errorf("%w: metric name is not UTF-8", ErrTelemetryBadValue)
	}
	p := parser{b: payload}
	p.ws()
	start := p.i
	if p.i >= len(p.b) || !(p.b[p.i] == '-' || p.b[p.i] >= '0' && p.b[p.i] <= '9') {
		return Sample{}, fmt.Errorf("%w: not a bare number", ErrTelemetryNotObject)
	}
	if _, err := p.number(false); err != nil {
		return Sample{}, err
	}
	num := p.b[start:p.i]
	p.ws()
	if p.i != len(p.b) {
		return Sample{}, p.syntax("the end after the number")
	}
	out := make([]byte, 0, len(name)+len(num)+8)
	out = append(out, '{')
	out = appendJSONString(out, name)
	out = append(out, ':')
	out = append(out, num...)
	out = append(out, '}')
	return Sample{JSON: out, N: 1, keys: keysHash(out)}, nil
}

// flat is the state of one flattening parse.
type flat struct {
	out   []byte
	ts    time.Time
	names [][]byte // decoded metric names, to refuse duplicates
	objs  [][]byte // dotted names of nested objects, likewise
}

// flats keeps flat states for reuse: a parse's state would otherwise be
// a heap object (members recurses) allocated for every message.
var flats = sync.Pool{New: func() any { return &flat{names: make([][]byte, 0, 16)} }}

func getFlat() *flat { return flats.Get().(*flat) }

// putFlat returns f to the pool without what points into a payload (its
// output buffer is kept unless it grew large).
func putFlat(f *flat) {
	clear(f.names)
	clear(f.objs)
	out := f.out[:0]
	if cap(out) > 4096 {
		out = nil
	}
	*f = flat{out: out, names: f.names[:0], objs: f.objs[:0]}
	flats.Put(f)
}

// taken reports whether name is already a metric or a nested object.
func (f *flat) taken(name []byte) bool {
	for _, n := range f.names {
		if string(n) == string(name) {
			return true
		}
	}
	for _, n := range f.objs {
		if string(n) == string(name) {
			return true
		}
	}
	return false
}

// members reads an object's members after its '{', through its '}'.
// prefix is the dotted name of the object ("" at the top level, where
// "ts" is the timestamp and names are copied as the payload spelled them).
func (p *parser) members(f *flat, prefix []byte, depth int) error {
	p.ws()
	if p.eat('}') {
		return nil
	}
	for {
		p.ws()
		kStart := p.i
		key, err := p.str()
		if err != nil {
			return err
		}
		rawKey := p.b[kStart:p.i]
		p.ws()
		if !p.eat(':') {
			return p.syntax("':' after a name")
		}
		p.ws()
		vStart := p.i
		name := key
		if prefix != nil {
			name = make([]byte, 0, len(prefix)+1+len(key))
			name = append(append(append(name, prefix...), '.'), key...)
		}
		switch {
		case prefix == nil && string(key) == "ts":
			if !f.ts.IsZero() {
				return fmt.Errorf("%w: given twice", ErrTelemetryBadTS)
			}
			if f.ts, err = p.ts(); err != nil {
				return err
			}
		case p.i < len(p.b) && p.b[p.i] == '{':
			if depth >= MaxTelemetryDepth {
				return fmt.Errorf("%w: %.40q: objects nested deeper than %d", ErrTelemetryBadValue, name, MaxTelemetryDepth)
			}
			if err := checkName(name); err != nil {
				return err
			}
			if err := checkName(key); err != nil {
				return err
			}
			if f.taken(name) {
				return fmt.Errorf("%w: %.40q given twice", ErrTelemetryBadValue, name)
			}
			if len(f.objs) == MaxTelemetryMetrics {
				return fmt.Errorf("%w: more than %d nested objects", ErrTelemetryTooLarge, MaxTelemetryMetrics)
			}
			f.objs = append(f.objs, name)
			p.i++
			if err := p.members(f, name, depth+1); err != nil {
				return err
			}
		default:
			if err := checkName(name); err != nil {
				return err
			}
			if prefix != nil { // else name is key
				if err := checkName(key); err != nil {
					return err
				}
			}
			if f.taken(name) {
				return fmt.Errorf("%w: %.40q given twice", ErrTelemetryBadValue, name)
			}
			if len(f.names) == MaxTelemetryMetrics {
				return fmt.Errorf("%w: more than %d metrics", ErrTelemetryTooLarge, MaxTelemetryMetrics)
			}
			f.names = append(f.names, name)
			if err := p.metric(name); err != nil {
				return err
			}
			if len(f.out) > 1 {
				f.out = append(f.out, ',')
			}
			if prefix == nil {
				f.out = append(f.out, rawKey...)
			} else {
				f.out = appendJSONString(f.out, string(name))
			}
			f.out = append(f.out, ':')
			f.out = append(f.out, p.b[vStart:p.i]...)
		}
		p.ws()
		if p.eat('}') {
			return nil
		}
		if !p.eat(',') {
			return p.syntax("',' or '}'")
		}
	}
}

// appendJSONString appends s (valid UTF-8) as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
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
		if bytes.IndexByte(s, 0) >= 0 {
			// \u0000: PostgreSQL's jsonb has no U+0000, and one such
			// value in a device's last values failed the writer's whole
			// batch there, every device's points with it.
			return fmt.Errorf("%w: %.40q: U+0000 in a string", ErrTelemetryBadValue, name)
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

// RejectReason names err's kind for the rejected-payload metric and the
// log: not_object, too_large, bad_ts, empty, not_own or bad_value.
func RejectReason(err error) string {
	switch {
	case errors.Is(err, ErrTelemetryNotOwn):
		return "not_own"
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
