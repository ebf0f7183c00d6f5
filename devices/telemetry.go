package devices

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-iot/tether/internal/logevery"
)

// telemetrySchema is the "telemetry" component's migrations (DB.Migrate).
// A released step is never edited; append a new one.
//
// History is kept in telemetry_chunks: each row holds up to chunkPoints
// points of one device, spanning at most chunkSpan, in compressed columns
// (telemetry_chunk.go). The writer keeps each device's latest chunk open
// and rewrites its row as points arrive (telemetry_build.go). (device_id,
// ts_min) serves a device's time ranges (a chunk starts at most chunkSpan
// before the range); ts_max serves pruning. telemetry_1m and telemetry_1h
// are the rollups (telemetry_rollup.go), kept longer than the raw points:
// the per-minute ones in chunks too (a row per metric and minute would
// take more room than the points of a device reporting every 10 s), the
// per-hour ones a row per device, metric and hour (without an index on
// ts since step 6).
//
// Steps 2 and 3 are the JSON-text chunks of earlier releases: the table
// telemetry is moved into telemetry_chunks at start-up (migrateLegacy),
// a few hundred rows per transaction, and dropped once empty.
var telemetrySchema = []string{
	// 1: one row per point (development builds only; replaced by 2).
	`CREATE TABLE telemetry (
		id        INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL,
		ts        INTEGER NOT NULL,
		vals      TEXT NOT NULL
	);
	CREATE INDEX telemetry_device_ts ON telemetry(device_id, ts);
	CREATE INDEX telemetry_ts ON telemetry(ts);`,
	// 2: chunks. The per-point history of development builds is dropped.
	`DROP TABLE telemetry;
	CREATE TABLE telemetry (
		id        INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL,
		ts_min    INTEGER NOT NULL,
		ts_max    INTEGER NOT NULL,
		n         INTEGER NOT NULL,
		points    TEXT NOT NULL
	);
	CREATE INDEX telemetry_device_ts ON telemetry(device_id, ts_min);
	CREATE INDEX telemetry_ts ON telemetry(ts_max);`,
	// 3: a deleted device's history goes with it, in the same transaction.
	`CREATE TRIGGER telemetry_device_deleted AFTER DELETE ON devices
	BEGIN DELETE FROM telemetry WHERE device_id = OLD.id; END;`,
	// 4: compressed column chunks and rollups.
	`CREATE TABLE telemetry_chunks (
		id        INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL,
		ts_min    INTEGER NOT NULL,
		ts_max    INTEGER NOT NULL,
		n         INTEGER NOT NULL,
		data      BLOB NOT NULL
	);
	CREATE INDEX telemetry_chunks_device_ts ON telemetry_chunks(device_id, ts_min);
	CREATE INDEX telemetry_chunks_ts ON telemetry_chunks(ts_max);
	CREATE TABLE telemetry_1m (
		id        INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL,
		ts_min    INTEGER NOT NULL,
		ts_max    INTEGER NOT NULL,
		n         INTEGER NOT NULL,
		data      BLOB NOT NULL
	);
	CREATE INDEX telemetry_1m_device_ts ON telemetry_1m(device_id, ts_min);
	CREATE INDEX telemetry_1m_ts ON telemetry_1m(ts_max);
	CREATE TABLE telemetry_1h (
		device_id TEXT NOT NULL,
		metric    TEXT NOT NULL,
		ts        INTEGER NOT NULL,
		min       REAL NOT NULL,
		max       REAL NOT NULL,
		sum       REAL NOT NULL,
		n         INTEGER NOT NULL,
		PRIMARY KEY (device_id, ts, metric)
	) WITHOUT ROWID;
	CREATE INDEX telemetry_1h_ts ON telemetry_1h(ts);
	CREATE TRIGGER telemetry_chunks_device_deleted AFTER DELETE ON devices
	BEGIN
		DELETE FROM telemetry_chunks WHERE device_id = OLD.id;
		DELETE FROM telemetry_1m WHERE device_id = OLD.id;
		DELETE FROM telemetry_1h WHERE device_id = OLD.id;
	END;`,
	// 5: the registry tells the store of a deleted device
	// (DeleteDeviceData) in its delete transaction: no trigger on its
	// table. (Step 3's trigger goes with the legacy table.)
	`DROP TRIGGER IF EXISTS telemetry_chunks_device_deleted;`,
	// 6: the hourly rollups are pruned device by device, by their
	// primary key (pruneHoursBefore): the index on ts took a third of
	// their room.
	`DROP INDEX IF EXISTS telemetry_1h_ts;`,
	// 7: the rollups' rows and bytes, kept by triggers on their own
	// tables (rollupSize reads them for telemetry.rollup_retention_size:
	// counting 10⁸ hourly rows once a minute would read them all). The
	// bytes are what varies per row (rollupRowBytes adds the rest). An
	// upsert that updates an hourly row fires no INSERT trigger; a
	// rewritten minute chunk fires the UPDATE one. PostgreSQL has its
	// statistics instead (no trigger: every writer would wait on one
	// counter row). One transaction: an interrupted start counts again.
	`CREATE TABLE telemetry_rollup_sizes (
		tbl   TEXT PRIMARY KEY,
		rows  INTEGER NOT NULL,
		bytes INTEGER NOT NULL
	);
	INSERT INTO telemetry_rollup_sizes SELECT 'telemetry_1m', count(*), COALESCE(sum(length(data) + 2*length(device_id)), 0) FROM telemetry_1m;
	INSERT INTO telemetry_rollup_sizes SELECT 'telemetry_1h', count(*), COALESCE(sum(length(device_id) + length(metric)), 0) FROM telemetry_1h;
	CREATE TRIGGER telemetry_1m_size_insert AFTER INSERT ON telemetry_1m BEGIN
		UPDATE telemetry_rollup_sizes SET rows = rows + 1, bytes = bytes + length(NEW.data) + 2*length(NEW.device_id) WHERE tbl = 'telemetry_1m';
	END;
	CREATE TRIGGER telemetry_1m_size_update AFTER UPDATE OF device_id, data ON telemetry_1m BEGIN
		UPDATE telemetry_rollup_sizes SET bytes = bytes + length(NEW.data) + 2*length(NEW.device_id) - length(OLD.data) - 2*length(OLD.device_id) WHERE tbl = 'telemetry_1m';
	END;
	CREATE TRIGGER telemetry_1m_size_delete AFTER DELETE ON telemetry_1m BEGIN
		UPDATE telemetry_rollup_sizes SET rows = rows - 1, bytes = bytes - length(OLD.data) - 2*length(OLD.device_id) WHERE tbl = 'telemetry_1m';
	END;
	CREATE TRIGGER telemetry_1h_size_insert AFTER INSERT ON telemetry_1h BEGIN
		UPDATE telemetry_rollup_sizes SET rows = rows + 1, bytes = bytes + length(NEW.device_id) + length(NEW.metric) WHERE tbl = 'telemetry_1h';
	END;
	CREATE TRIGGER telemetry_1h_size_delete AFTER DELETE ON telemetry_1h BEGIN
		UPDATE telemetry_rollup_sizes SET rows = rows - 1, bytes = bytes - length(OLD.device_id) - length(OLD.metric) WHERE tbl = 'telemetry_1h';
	END;`,
}

// Chunk bounds: points in one history row, the time they may span, and
// the size they grow to. A chunk of a device that reports every few
// seconds spans a few hours; its row fills nearly all of one 4 KiB page
// (SQLite keeps a row of up to about 4,000 bytes on its page, and moves
// the rest of a larger one to overflow pages): what is left of the page
// beside a complete chunk is space no other row takes (at 3,600 bytes
// it was a tenth of the history's file, 2026-12-02).
const (
	chunkPoints      = 1024
	chunkSpan        = 8 * time.Hour
	chunkTargetBytes = 3850
	chunkMaxBytes    = 3950
)

// TelemetryOptions configure a Telemetry store; zero fields take defaults.
type TelemetryOptions struct {
	// FlushInterval is the longest a queued point waits to be written
	// (default 1s).
	FlushInterval time.Duration
	// QueueSize is how many points may wait; beyond it points are dropped
	// and counted (default 262144).
	QueueSize int
	// QueueBytes bounds the memory of the points waiting, and of the
	// batch being written, beside their number (default 64 MiB).
	QueueBytes int64
	// BatchSize is the most points written in one batch (default
	// 262144), in one transaction unless they make more than txRows
	// rows (writeBatch). The writer writes what it has taken every FlushInterval,
	// or sooner when it has BatchSize points (or half of QueueBytes, at
	// most 32 MiB, of them). Each write costs a few statements per device
	// besides its points (the open chunk's row, the hourly rollups, the
	// last values), so fewer, larger writes cost less CPU a point; a
	// second of points at 200,000 a second holds the database's one write
	// connection about 0.2 s on a 2-core machine.
	BatchSize int
	// Retention is how long points are kept (default 7 days).
	Retention time.Duration
	// RollupRetention is how long the per-minute and per-hour rollups
	// are kept (default 400 days).
	RollupRetention time.Duration
	// PruneInterval is how often expired points are pruned (default one
	// minute, or Retention/10 if shorter).
	PruneInterval time.Duration
	// DeviceValuesRate bounds the metric values each device may have
	// stored, a second on average (telemetry_rate.go); 0 means no bound.
	// A sample that would pass it is not stored (whole), counted and
	// logged at most once a minute per device.
	DeviceValuesRate int
	// DeviceValuesBurst is the most values a device may have stored at
	// once beyond DeviceValuesRate (default: a second of it, at least
	// MaxTelemetryMetrics, so that any one sample fits).
	DeviceValuesBurst int
	// RetentionSize bounds the history's size on disk, in bytes
	// (telemetry_prune.go); 0 means no bound. Past it the pruner
	// removes the oldest history rows, of all devices, until under it.
	RetentionSize int64
	// RollupRetentionSize bounds the rollups' size on disk, in bytes
	// (telemetry_rollup_size.go); 0 means no bound. Past it the pruner
	// removes the oldest minute rollups, then whole oldest hours of the
	// hourly ones, until under it.
	RollupRetentionSize int64
	// PruneChunk is how many history rows (each up to 1,024 points) one
	// pruning transaction deletes (default 200), so pruning never holds
	// the writer for long. A row goes when its latest point has expired.
	PruneChunk int
	// Logger receives the store's log; nil means slog.Default().
	Logger *slog.Logger
	// LastValues keeps each device's latest values and last seen (the
	// registry); nil keeps only history.
	LastValues LastValues

	// migrateStop, in tests, stops the migration of earlier releases'
	// history after that many transactions, as a kill would.
	migrateStop int
}

// Point is one stored telemetry point.
type Point struct {
	TS     time.Time      `json:"ts"`
	Values map[string]any `json:"values"`
}

// queued is a point waiting for the writer.
type queued struct {
	// dev is its device's metric names, which name the device (dev.id):
	// 8 bytes rather than a string's 16, and the writer groups a batch
	// by it without hashing each point's id (in its packet's topic, a
	// cache miss a point).
	dev     *deviceNames
	ts      int64 // Unix ms
	json    []byte
	arrived int64 // Unix ns (a time.Time would be 24 bytes, with a pointer)
	// keys is the version of the keys of json (metricNames.filterKeys):
	// points with the same version, other than 0, have the same keys.
	keys uint64
}

// Telemetry is the telemetry history: a bounded queue that a batch writer
// drains into SQLite, one transaction per batch (or per txRows rows of
// it), into compressed chunks and hourly rollups, updating each device's
// last values and last_seen in the same transaction; a pruner that folds expired history into minute
// rollups a few rows per transaction, and drops rollups past their
// retention; and queries over time ranges (telemetry_query.go).
//
// Add never blocks: it is called from MQTT hooks on the publisher's
// goroutine. Close flushes what is queued and stops the goroutines.
type Telemetry struct {
	db   *DB
	log  *slog.Logger
	opts TelemetryOptions

	queue   *pointQueue
	flushes chan chan error
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  atomic.Bool
	once    sync.Once

	// chunks is the writer's open chunks; rollups its batch aggregates;
	// order its batch grouped by device. All are the writer goroutine's
	// own.
	chunks  *chunkBuilder
	rollups *rollups
	order   *batchOrder
	// segs and partLasts are the writer's scratch: the segments of the
	// batch one transaction writes (writeBatch), and their devices' last
	// values.
	segs      []segment
	partLasts []LastValue
	// wake tells the writer that the queue is filling up (wakeAt).
	wake   chan struct{}
	wakeAt int

	// last keeps the devices' last values (the registry); nil keeps only
	// history.
	last LastValues

	// budget bounds the bytes queued; names caps each device's metric
	// names (telemetry_names.go).
	budget byteBudget
	names  *metricNames
	// rate bounds each device's stored values (DeviceValuesRate);
	// rateLogged throttles its log, once a minute per device.
	rate       valueRate
	rateLogged *logevery.Keys
	// opened is when the store opened: the start of NotStored's counts.
	opened time.Time
	// refresh takes the devices whose names are read again
	// (telemetry_names_shared.go); nil on SQLite.
	refresh chan string

	m *telemetryMetrics
	// maxTxRows is the most rows a write transaction has written
	// (partRows), for tests.
	maxTxRows atomic.Int64
	// logged throttles the writer's failures: once a minute per device.
	logged *logevery.Keys
}

// OpenTelemetry migrates the "telemetry" component and starts the writer
// and the pruner.
func OpenTelemetry(ctx context.Context, db *DB, o *TelemetryOptions) (*Telemetry, error) {
	var opts TelemetryOptions
	if o != nil {
		opts = *o
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 262144
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 262144
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 64 << 20
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.RollupRetention <= 0 {
		opts.RollupRetention = 400 * 24 * time.Hour
	}
	if opts.PruneInterval <= 0 {
		opts.PruneInterval = min(time.Minute, opts.Retention/10)
	}
	if opts.PruneChunk <= 0 {
		opts.PruneChunk = 200
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DeviceValuesRate > 0 && opts.DeviceValuesBurst <= 0 {
		opts.DeviceValuesBurst = max(opts.DeviceValuesRate, MaxTelemetryMetrics)
	}
	if err := db.Migrate(ctx, "telemetry", Schema{SQLite: telemetrySchema, Postgres: telemetrySchemaPostgres}); err != nil {
		return nil, err
	}
	t := &Telemetry{
		db:      db,
		log:     opts.Logger.With("component", "telemetry"),
		opts:    opts,
		queue:   newPointQueue(opts.QueueSize),
		flushes: make(chan chan error),
		stop:    make(chan struct{}),
		last:    opts.LastValues,
		budget:  byteBudget{max: opts.QueueBytes},
		names:   newMetricNames(),
		chunks:  newChunkBuilder(db.Dialect),
		rollups: newRollups(true, db.Dialect),
		order:   newBatchOrder(),
		wake:    make(chan struct{}, 1),
		wakeAt:  max(opts.QueueSize/4, 1),
		logged:  logevery.New(time.Minute),

		rate:       newValueRate(opts.DeviceValuesRate, opts.DeviceValuesBurst),
		rateLogged: logevery.New(time.Minute),
		opened:     time.Now().UTC().Truncate(time.Millisecond),
	}
	t.m = newTelemetryMetrics(t)
	if t.last != nil {
		if err := t.names.load(ctx, t.last); err != nil {
			return nil, err
		}
	}
	if err := t.migrateLegacy(ctx); err != nil {
		return nil, err
	}
	if t.last == nil {
		t.log.Warn("telemetry: no registry: keeping history without last values")
	}
	t.wg.Add(2)
	go t.write()
	go t.prune()
	t.startNameRefresh()
	return t, nil
}

// Add queues a parsed sample from device, received at arrived. It never
// blocks: when the queue is full, by count or by bytes (or the store
// closed), the point is dropped and counted, and Add returns false. The
// metrics with a new name once the device has MaxDeviceMetrics are left
// out and counted; a sample left with none is not stored. A sample that
// would take its device past DeviceValuesRate is not stored either,
// counted and logged (at most once a minute per device).
func (t *Telemetry) Add(device string, s Sample, arrived time.Time) bool {
	return t.add(device, s, arrived.UnixNano())
}

// AddNow is Add of a sample received now, read from the wall clock alone
// (arrivalNow): what the MQTT hook calls for each message.
func (t *Telemetry) AddNow(device string, s Sample) bool {
	return t.add(device, s, arrivalNow())
}

// add is Add with arrived in Unix nanoseconds.
func (t *Telemetry) add(device string, s Sample, arrived int64) bool {
	if t.closed.Load() {
		t.m.dropped.Inc()
		return false
	}
	json, refused, keys, dev := t.names.admit(device, s.JSON, s.keys)
	if refused > 0 {
		t.m.metricsRefused.Add(float64(refused))
		if json == nil {
			return false
		}
	}
	if t.rate.interval > 0 && !t.rate.allow(&dev.tat, s.N-refused, arrived) {
		t.overRate(device, dev, s.N-refused, arrived)
		return false
	}
	ts := arrived / int64(time.Millisecond)
	if !s.TS.IsZero() {
		ts = s.TS.UnixMilli()
	}
	p := queued{dev: dev, ts: ts, json: json, arrived: arrived, keys: keys}
	if !t.budget.take(p.cost()) {
		t.m.dropped.Inc()
		return false
	}
	n, ok := t.queue.push(&p)
	if !ok {
		t.budget.give(p.cost())
		t.m.dropped.Inc()
		return false
	}
	if n >= t.wakeAt {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// cost is the bytes a queued point holds, for the queue's byte bound.
func (p *queued) cost() int64 { return int64(len(p.json)+len(p.dev.id)) + entryOverhead }

// DeleteDeviceData deletes a deleted device's history and rollups in tx,
// the registry's delete transaction (DeviceData).
func (t *Telemetry) DeleteDeviceData(ctx context.Context, tx *sql.Tx, id string) error {
	for _, table := range []string{"telemetry_chunks", "telemetry_1m", "telemetry_1h"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE device_id = ?`, id); err != nil {
			return fmt.Errorf("telemetry: delete %s of %s: %w", table, id, err)
		}
	}
	return nil
}

// DeviceDeleted drops what the store remembers in memory of a deleted
// device (its metric names), so that a device registered again under its
// id starts clean (DeviceData).
func (t *Telemetry) DeviceDeleted(id string) { t.names.forget(id) }

// MetricsRefused returns how many metrics were left out because their
// device had MaxDeviceMetrics names already.
func (t *Telemetry) MetricsRefused() int64 { return count(t.m.metricsRefused) }

// Reject counts a payload that was not stored because it did not parse.
func (t *Telemetry) Reject(err error) {
	t.m.rejected.WithLabelValues(RejectReason(err)).Inc()
}

// Flush writes everything queued before the call and returns when it is
// committed.
func (t *Telemetry) Flush(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case t.flushes <- done:
	case <-t.stop:
		return fmt.Errorf("telemetry flush: closed")
	case <-ctx.Done():
		return fmt.Errorf("telemetry flush: %w", ctx.Err())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("telemetry flush: %w", ctx.Err())
	}
}

// Close stops taking points, writes what is queued and stops the writer and
// the pruner. It is idempotent; it does not close the DB.
func (t *Telemetry) Close() error {
	t.once.Do(func() {
		t.closed.Store(true)
		close(t.stop)
	})
	t.wg.Wait()
	return nil
}

// Stats returns the points stored and dropped so far.
func (t *Telemetry) Stats() (stored, dropped int64) {
	return count(t.m.stored), count(t.m.dropped)
}
