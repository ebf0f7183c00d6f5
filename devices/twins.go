package devices

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/logevery"
)

// twinsSchema is the "twins" component's migrations (DB.Migrate). Times
// are Unix milliseconds. A released step is never edited.
var twinsSchema = []string{
	`CREATE TABLE twins (
		device_id        TEXT PRIMARY KEY,
		desired          TEXT NOT NULL DEFAULT '{}',
		desired_version  INTEGER NOT NULL DEFAULT 0,
		reported         TEXT NOT NULL DEFAULT '{}',
		reported_version INTEGER NOT NULL DEFAULT 0,
		updated_at       INTEGER NOT NULL
	);`,
	// 2: a deleted device's twin goes with it, in the same transaction.
	`CREATE TRIGGER twins_device_deleted AFTER DELETE ON devices
	BEGIN DELETE FROM twins WHERE device_id = OLD.id; END;`,
	// 3: the registry tells the store of a deleted device
	// (DeleteDeviceData) in its delete transaction: no trigger on its
	// table.
	`DROP TRIGGER IF EXISTS twins_device_deleted;`,
}

// The limits of a desired or reported patch (CheckTwinPatch).
const (
	// MaxTwinPatch is the largest patch, in bytes.
	MaxTwinPatch = 64 << 10
	// MaxTwinDepth is how deep objects and arrays may nest in a patch
	// (the patch itself is depth 1). A merge is never deeper than the
	// deeper of its two documents, so no stored twin is deeper either,
	// and the database's JSON functions (SQLite's stop at 1,000 levels)
	// never refuse one.
	MaxTwinDepth = 32
	// MaxTwinState bounds what patches add up to: a patch that would
	// make the desired, or the reported, state longer than this as stored
	// JSON, and longer than it was, is refused; one that leaves it no
	// longer always merges.
	MaxTwinState = 256 << 10
)

// twinStateFits is the condition under which a merge of patch ?2 into
// column col (desired or reported) is kept (MaxTwinState, given as ?4).
func twinStateFits(col string) string {
	return `length(json_patch(twins.` + col + `, ?2)) <= CASE WHEN length(twins.` + col + `) > ?4 THEN length(twins.` + col + `) ELSE ?4 END`
}

// Twin is a device's desired and reported state (SPEC §6). Delta holds the
// desired keys whose reported value differs.
type Twin struct {
	DeviceID        string         `json:"device_id"`
	Desired         map[string]any `json:"desired"`
	Reported        map[string]any `json:"reported"`
	Delta           map[string]any `json:"delta"`
	DesiredVersion  int64          `json:"desired_version"`
	ReportedVersion int64          `json:"reported_version"`
}

// TwinsOptions configure a Twins store; zero fields take defaults.
type TwinsOptions struct {
	// QueueSize is how many reported patches may wait (default 16384).
	QueueSize int
	// QueueBytes bounds their memory beside their number (default 16 MiB).
	QueueBytes int64
	Logger     *slog.Logger
}

// Twins stores device twins ("twins" component). Desired state is set
// synchronously (from the API); reported patches arrive from MQTT hooks and
// are queued (never blocking) and merged in order by one writer goroutine.
type Twins struct {
	db  *DB
	log *slog.Logger

	queue   chan twinPatch
	budget  byteBudget // bytes queued (queue.go)
	flushes chan chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	// merged, dropped, rejected and writeErrors count reported patches
	// by outcome (tether_twins_reported_total, metrics.go).
	merged, dropped, rejected, writeErrors prometheus.Counter
	reported                               *prometheus.CounterVec
	// logged throttles the writer's failures: once a minute per device.
	logged *logevery.Keys
}

type twinPatch struct {
	device string
	patch  []byte
}

// OpenTwins migrates the "twins" component and starts the reported writer.
func OpenTwins(ctx context.Context, db *DB, o *TwinsOptions) (*Twins, error) {
	var opts TwinsOptions
	if o != nil {
		opts = *o
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 16384
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 16 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := db.Migrate(ctx, "twins", Schema{SQLite: twinsSchema, Postgres: twinsSchemaPostgres}); err != nil {
		return nil, err
	}
	t := &Twins{db: db, log: opts.Logger.With("component", "twins"), queue: make(chan twinPatch, opts.QueueSize), budget: byteBudget{max: opts.QueueBytes},
		flushes: make(chan chan struct{}), stop: make(chan struct{}), logged: logevery.New(time.Minute)}
	t.reported = counterVec(prometheus.CounterOpts{Name: "tether_twins_reported_total",
		Help: "Reported-state patches from devices, by outcome: merged, dropped (queue full), rejected (not a JSON object, too large or nested too deep, or the reported state would grow past its bound), error (write failed)."},
		"outcome", "merged", "dropped", "rejected", "error")
	t.merged, t.dropped = t.reported.WithLabelValues("merged"), t.reported.WithLabelValues("dropped")
	t.rejected, t.writeErrors = t.reported.WithLabelValues("rejected"), t.reported.WithLabelValues("error")
	t.wg.Add(1)
	go t.run()
	return t, nil
}

// Close stops the writer after merging what is queued. Idempotent.
func (t *Twins) Close() error {
	t.once.Do(func() { close(t.stop) })
	t.wg.Wait()
	return nil
}

// CheckTwinPatch validates a merge patch: a JSON object of at most
// MaxTwinPatch bytes, nested at most MaxTwinDepth levels. field names the
// patch in errors. Desired state may not use the key "version", which the
// published document carries. It is the one check of desired patches (the
// API) and reported ones (MQTT).
func CheckTwinPatch(field string, patch []byte) (map[string]any, error) {
	if len(patch) > MaxTwinPatch {
		return nil, invalid(field, "larger than %d bytes", MaxTwinPatch)
	}
	// Only JSON's whitespace: the databases take no other around it.
	p := bytes.Trim(patch, " \t\r\n")
	if len(p) == 0 || p[0] != '{' {
		return nil, invalid(field, "must be a JSON object")
	}
	if jsonDeeperThan(p, MaxTwinDepth) {
		return nil, invalid(field, "objects and arrays nested deeper than %d levels", MaxTwinDepth)
	}
	// Go's decoder takes invalid UTF-8 (as U+FFFD) where SQLite would
	// store it as it is and PostgreSQL refuses it.
	if !utf8.Valid(p) {
		return nil, invalid(field, "not valid UTF-8")
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		// Into a map[string]any, only a number no float64 holds (1e400)
		// is of the wrong type: the object itself is well formed.
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return nil, invalid(field, "a number beyond the range of a double (±1.8e308)")
		}
		return nil, invalid(field, "must be a JSON object")
	}
	if hasNUL(m) {
		// PostgreSQL's jsonb has no U+0000 (\u0000).
		return nil, invalid(field, "U+0000 in a name or a string")
	}
	if _, ok := m["version"]; ok && field == "desired" {
		return nil, invalid(field, `"version" is reserved`)
	}
	return m, nil
}

// hasNUL reports whether a decoded JSON value holds U+0000 in a name or
// a string (its nesting is bounded by MaxTwinDepth, checked before).
func hasNUL(v any) bool {
	switch v := v.(type) {
	case string:
		return strings.IndexByte(v, 0) >= 0
	case []any:
		return slices.ContainsFunc(v, hasNUL)
	case map[string]any:
		for k, e := range v {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(e) {
				return true
			}
		}
	}
	return false
}

// jsonDeeperThan reports whether objects and arrays nest deeper than
// limit levels in the JSON text p (brackets inside strings do not count). It
// reads p once and never recurses, so it runs before p is decoded;
// whether p is valid JSON is for the decoder to say.
func jsonDeeperThan(p []byte, limit int) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range p {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if depth++; depth > limit {
				return true
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return false
}

// Get returns device's twin; a device without one has an empty twin at
// version 0.
func (t *Twins) Get(ctx context.Context, device string) (Twin, error) {
	return getTwin(ctx, t.db.R, device)
}

type queryRower interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func getTwin(ctx context.Context, q queryRower, device string) (Twin, error) {
	tw := Twin{DeviceID: device}
	var desired, reported string
	err := q.QueryRowContext(ctx, `SELECT desired, desired_version, reported, reported_version FROM twins WHERE device_id = ?`, device).
		Scan(&desired, &tw.DesiredVersion, &reported, &tw.ReportedVersion)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		desired, reported = "{}", "{}"
	case err != nil:
		return tw, fmt.Errorf("get twin %s: %w", device, err)
	}
	if err := json.Unmarshal([]byte(desired), &tw.Desired); err != nil {
		return tw, fmt.Errorf("get twin %s: desired: %w", device, err)
	}
	if err := json.Unmarshal([]byte(reported), &tw.Reported); err != nil {
		return tw, fmt.Errorf("get twin %s: reported: %w", device, err)
	}
	tw.Delta = Delta(tw.Desired, tw.Reported)
	return tw, nil
}

// Delta returns the desired keys whose reported value differs (or is
// missing), with their desired values.
func Delta(desired, reported map[string]any) map[string]any {
	d := map[string]any{}
	for k, v := range desired {
		if r, ok := reported[k]; !ok || !reflect.DeepEqual(r, v) {
			d[k] = v
		}
	}
	return d
}

// PatchDesired merges patch (a JSON merge patch, RFC 7396: null removes a
// key) into device's desired state, bumps its version and returns the twin.
func (t *Twins) PatchDesired(ctx context.Context, device string, patch []byte) (Twin, error) {
	if !ValidID(device) {
		return Twin{}, invalid("device_id", "not a device id")
	}
	if _, err := CheckTwinPatch("desired", patch); err != nil {
		return Twin{}, err
	}
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return Twin{}, fmt.Errorf("patch desired %s: %w", device, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO twins(device_id, desired, desired_version, updated_at)
		VALUES (?1, json_patch('{}', ?2), 1, ?3)
		ON CONFLICT(device_id) DO UPDATE SET desired = json_patch(twins.desired, ?2),
			desired_version = twins.desired_version + 1, updated_at = ?3
		WHERE `+twinStateFits("desired"),
		device, string(patch), time.Now().UnixMilli(), MaxTwinState)
	if err != nil {
		return Twin{}, fmt.Errorf("patch desired %s: %w", device, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return Twin{}, fmt.Errorf("patch desired %s: %w", device, err)
	} else if n == 0 {
		return Twin{}, invalid("desired", "would make the desired state larger than %d bytes", MaxTwinState)
	}
	tw, err := getTwin(ctx, tx, device)
	if err != nil {
		return Twin{}, err
	}
	if err := tx.Commit(); err != nil {
		return Twin{}, fmt.Errorf("patch desired %s: %w", device, err)
	}
	return tw, nil
}

// DesiredDocument is the retained payload of devices/{id}/twin/desired:
// the full desired state with "version".
func DesiredDocument(tw Twin) []byte {
	doc := make(map[string]any, len(tw.Desired)+1)
	for k, v := range tw.Desired {
		doc[k] = v
	}
	doc["version"] = tw.DesiredVersion
	b, _ := json.Marshal(doc)
	return b
}

// Collector returns a prometheus.Collector of the twin counts.
func (t *Twins) Collector() prometheus.Collector { return t.reported }

// DeleteDeviceData deletes a deleted device's twin in tx, the registry's
// delete transaction (DeviceData).
func (t *Twins) DeleteDeviceData(ctx context.Context, tx *sql.Tx, id string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM twins WHERE device_id = ?`, id); err != nil {
		return fmt.Errorf("twins: delete that of %s: %w", id, err)
	}
	return nil
}

// DeviceDeleted implements DeviceData: the twin keeps nothing in memory.
func (t *Twins) DeviceDeleted(string) {}
