package devices

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// write is the batch writer. It takes what is queued every pollEvery
// (and when Add finds the queue filling up), not on every point: a writer
// that blocks on the queue is woken by nearly every point, and each
// wake-up costs both goroutines more CPU than taking the point. It writes
// the points taken as one batch (writeBatch) every FlushInterval, on
// Flush and on Close, and sooner when the batch is full (BatchSize points
// or maxBatchBytes). While points are being dropped it logs once per
// interval.
func (t *Telemetry) write() {
	defer t.wg.Done()
	tick := time.NewTicker(t.opts.FlushInterval)
	defer tick.Stop()
	poll := time.NewTicker(t.pollEvery())
	defer poll.Stop()
	batch := make([]queued, 0, min(t.opts.BatchSize, 4096))
	var batchBytes int64
	maxBytes := t.maxBatchBytes()
	full := func() bool { return len(batch) >= t.opts.BatchSize || batchBytes >= maxBytes }
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := t.writeBatch(batch)
		clear(batch) // let the points go
		batch = batch[:0]
		// Written (or failed): the points' bytes are free for new ones.
		t.budget.give(batchBytes)
		batchBytes = 0
		return err
	}
	// take takes what was queued when it was called (not what comes
	// meanwhile: publishers that keep the queue busy must not keep the
	// writer from Flush and Close), writing full batches as it goes.
	take := func() error {
		var err error
		t.queue.take(t.queue.len(), func(p *queued) {
			batch = append(batch, *p)
			batchBytes += p.cost()
			if full() {
				if e := flush(); e != nil {
					err = e
				}
			}
		})
		return err
	}
	var lastDropped int64
	for {
		select {
		case <-poll.C:
			_ = take()
		case <-t.wake:
			_ = take()
		case <-tick.C:
			_ = take()
			_ = flush()
			if d := count(t.m.dropped); d != lastDropped {
				t.log.Warn("telemetry: queue full, points routed but not stored",
					"dropped", d-lastDropped, "interval", t.opts.FlushInterval, "queue_size", t.opts.QueueSize,
					"queue_bytes", t.opts.QueueBytes)
				lastDropped = d
			}
		case done := <-t.flushes:
			err := take()
			if e := flush(); e != nil {
				err = e
			}
			done <- err
		case <-t.stop:
			err := take()
			if e := flush(); e != nil {
				err = e
			}
			if err != nil {
				t.log.Error("telemetry: final flush", "error", err)
			}
			return
		}
	}
}

// pollEvery is how often the writer takes what is queued: often enough
// that the queue does not fill between two polls at any rate the broker
// routes (Add wakes the writer when it is a quarter full), seldom enough
// to cost nothing.
func (t *Telemetry) pollEvery() time.Duration {
	return max(min(t.opts.FlushInterval/4, 10*time.Millisecond), time.Millisecond)
}

// maxBatchBytes is the most bytes of points one batch writes: half
// the queue's bound, at most 32 MiB (a second of points at 200,000 a
// second), so that a batch of large payloads does not hold the writer
// (and its memory) for long.
func (t *Telemetry) maxBatchBytes() int64 { return max(min(t.opts.QueueBytes/2, 32<<20), 1) }

// txRows is about the most rows one write transaction writes: hourly
// rollups (a row per device, metric and hour the points fall in),
// history chunks and devices' last values. A batch that would write
// more is written in several transactions, each committed on its own
// (writeBatch), so that what a transaction does, not only how many
// points it holds, stays far within its time (a minute): a point of 64
// numbers an hour after its device's last makes 64 new hourly rows, and
// a batch of 40,379 such points (1,000 devices, 2.6 million rows) took
// longer than its minute and was lost whole (docs/PERFORMANCE.md). At
// 20,000–100,000 rows a second (BenchmarkTelemetryWriteNewHours, SQLite
// and PostgreSQL, an idle machine) a transaction of 32,768 rows takes
// under 2 s. A batch of points of the current hour writes a row per
// device and metric: a fleet of 500 devices of 64 metrics fits one.
const txRows = 1 << 15

// segment is points [from, to) of the batch's device dev (batchOrder:
// in time order), written in one transaction.
type segment struct{ dev, from, to int }

// last reports whether s holds its device's last points of the batch
// (its transaction updates the device's last values).
func (s segment) last(o *batchOrder) bool { return s.to == len(o.points(s.dev)) }

// writeBatch writes batch: every point into history and the hourly
// rollups, and per device the merged latest values and last_seen, in one
// transaction, or in several of about txRows rows each (a device's points
// may be split between two, in time order; its last values go with its
// last points). A device whose writes the database refuses loses that
// transaction's points of it alone (batchWrite): they are counted as
// db_error and logged (the first of each device per minute, never the
// values); the other devices' points are written. A fault of the
// database fails the transaction, which is written again, from what was
// committed before, for a few seconds (retryTransient); meanwhile points
// queue up to the queue's bounds. A transaction that fails for good
// loses its points and those of the batch's transactions after it; those
// before it are committed.
func (t *Telemetry) writeBatch(batch []queued) error {
	start := time.Now()
	// Grouped by device, each device's points in time order.
	o := t.order
	o.group(batch)
	defer o.done()
	now := time.Now()
	var lasts []LastValue
	if t.last != nil {
		lasts = o.lastValues()
	}
	var stored, txs int
	for at := (segment{}); at.dev < len(o.devs); txs++ {
		segs, next := t.addPart(at, now)
		points := 0
		for _, s := range segs {
			points += s.to - s.from
		}
		var lost, rows int
		attempt := 0
		err := retryTransient(t.stop, t.log, "telemetry", time.Minute, func(ctx context.Context) (err error) {
			if attempt++; attempt > 1 { // the last attempt's written let them go
				for _, s := range segs {
					t.addSegment(s, now)
				}
			}
			lost, rows, err = t.writeTx(ctx, segs, lasts, now)
			return err
		})
		if err != nil {
			t.m.stored.Add(float64(stored))
			t.m.writeErrors.Inc()
			t.log.Error("telemetry: write batch", "points", len(batch)-stored, "of", len(batch), "transaction", txs+1, "error", err)
			return err
		}
		stored += points - lost
		t.m.transactions.Inc()
		if int64(rows) > t.maxTxRows.Load() {
			t.maxTxRows.Store(int64(rows))
		}
		at = next
	}
	took := time.Since(start)
	t.m.stored.Add(float64(stored))
	t.m.batches.Inc()
	t.m.lastBatch.Set(took.Seconds())
	t.log.Debug("telemetry: batch written", "points", len(batch), "transactions", txs, "took", took, "queued", t.queue.len())
	// Chunks of devices that stopped reporting are complete on disk.
	if count(t.m.batches)%64 == 0 {
		t.chunks.evict(now.Add(-chunkSpan))
	}
	return nil
}

// addPart adds the batch's points from at on (at.to unused) to the open
// chunks and the hourly rollups, device by device, until what they make
// a transaction write reaches txRows (partRows; at least one point), and
// returns them as segments, and where the next part starts.
func (t *Telemetry) addPart(at segment, now time.Time) (segs []segment, next segment) {
	o := t.order
	segs = t.segs[:0]
	defer func() { t.segs = segs }()
	for at.dev < len(o.devs) {
		d, pts := o.devs[at.dev], o.points(at.dev)
		from := len(t.chunks.pending)
		s := segment{dev: at.dev, from: at.from, to: at.from}
		full := false
		for s.to < len(pts) && !full {
			p := &pts[s.to]
			t.chunks.add(d, p.ts, p.json, now, t.rollups)
			s.to++
			full = t.partRows(len(segs)+1) >= txRows
		}
		t.chunks.encodeNew(from)
		segs = append(segs, s)
		if s.last(o) {
			at = segment{dev: at.dev + 1}
		} else {
			at.from = s.to
		}
		if full {
			break
		}
	}
	return segs, at
}

// partRows is about the rows the points added so far, of devices
// devices, make a transaction write: their hourly rollups, chunks and
// last values.
func (t *Telemetry) partRows(devices int) int {
	n := len(t.rollups.hours) + len(t.chunks.pending)
	if t.last != nil {
		n += devices
	}
	return n
}

// addSegment adds the points of s to the open chunks and the hourly
// rollups, and encodes them (chunkBuilder.encodeNew).
func (t *Telemetry) addSegment(s segment, now time.Time) {
	o := t.order
	d := o.devs[s.dev]
	pts := o.points(s.dev)[s.from:s.to]
	from := len(t.chunks.pending)
	for k := range pts {
		p := &pts[k]
		t.chunks.add(d, p.ts, p.json, now, t.rollups)
	}
	t.chunks.encodeNew(from)
}

// writeTx writes the points of segs, added to the open chunks and the
// rollups, in one transaction, and the last values (of lasts, the
// batch's) of the devices whose last points they hold. It returns how
// many points were dropped because the database refused their device's
// writes, and about how many rows the transaction wrote (partRows).
func (t *Telemetry) writeTx(ctx context.Context, segs []segment, lasts []LastValue, now time.Time) (lost, rows int, err error) {
	o := t.order
	var partLasts []LastValue
	if t.last != nil {
		partLasts = t.partLasts[:0]
		for _, s := range segs {
			if s.last(o) {
				partLasts = append(partLasts, lasts[s.dev])
			}
		}
		t.partLasts = partLasts
		defer clear(partLasts) // let the batch's values go
	}
	rows = len(t.rollups.hours) + len(t.chunks.pending) + len(partLasts)
	ok := false
	defer func() {
		t.chunks.written(ok)
		t.rollups.written(ok)
	}()
	var dev devicesWrite
	defer dev.close()
	failed, err := (&batchWrite{name: "telemetry write", n: len(segs),
		all: func(ctx context.Context, tx *sql.Tx) error {
			ctx = stmtContext(t.db.Dialect, ctx)
			if err := t.chunks.write(ctx, tx); err != nil {
				return err
			}
			if err := t.rollups.write(ctx, tx); err != nil {
				return err
			}
			if t.last != nil {
				return t.last.UpdateLastValues(ctx, tx, partLasts)
			}
			return nil
		},
		again: func(ctx context.Context, tx *sql.Tx) error {
			return dev.start(stmtContext(t.db.Dialect, ctx), tx, t, segs, now)
		},
		one: func(ctx context.Context, tx *sql.Tx, j int) error {
			ctx = stmtContext(t.db.Dialect, ctx)
			s := segs[dev.order[j]]
			if err := t.chunks.writeChunks(ctx, tx, dev.stmts, dev.chunks(t, j)); err != nil {
				return err
			}
			if err := t.rollups.writeHours(ctx, tx, dev.hours[o.devs[s.dev]]); err != nil {
				return err
			}
			if t.last != nil && s.last(o) {
				return t.last.UpdateLastValues(ctx, tx, lasts[s.dev:s.dev+1])
			}
			return nil
		},
	}).run(ctx, t.db.W)
	if err != nil {
		return 0, 0, err
	}
	ok = true
	for _, f := range failed {
		s := segs[dev.order[f.i]]
		t.chunks.forget(dev.chunks(t, f.i))
		n := s.to - s.from
		lost += n
		if d := o.devs[s.dev]; t.logged.Allow(d, now) {
			t.log.Warn("telemetry: points not stored (first this minute for this device)",
				"device", d, "points", n, "error", f.err)
		}
	}
	t.m.dbErrors.Add(float64(lost))
	return lost, rows, nil
}

// stmtContext is the context of the writer's statements in a
// transaction begun with ctx. On SQLite it is ctx without its end: the
// driver watches a context that can end with a goroutine a statement
// (a few microseconds each, and a write runs thousands of statements),
// while none of these statements can run long (each writes a row or a
// few; a wait for the database's lock ends at busy_timeout, 10 s). The
// transaction still ends with ctx: database/sql rolls it back once the
// statement running ends, and the statements after it and Commit fail.
// On PostgreSQL, where a statement may wait on the network, ctx itself.
func stmtContext(d database.Dialect, ctx context.Context) context.Context {
	if d == database.SQLite {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// devicesWrite is a transaction's points written again device by device,
// each under a savepoint (batchWrite): the segments in the order they are
// written, the pending chunks and hourly rollups of each, and the
// statements.
type devicesWrite struct {
	order []int // the transaction's segment indexes, by device id on PostgreSQL
	from  []int // chunks.pending[from[j]:from[j+1]] are order[j]'s
	hours map[string][]hourKey
	stmts *chunkStmts
}

// start starts the transaction's points again in tx: what the first
// transaction wrote was rolled back, so the writer starts from what was
// committed before, as after a failed batch (the devices' open chunks
// forgotten), and adds the points of segs again, device by device.
func (w *devicesWrite) start(ctx context.Context, tx *sql.Tx, t *Telemetry, segs []segment, now time.Time) error {
	t.chunks.written(false)
	t.rollups.written(false)
	o := t.order
	w.order = make([]int, len(segs))
	for i := range w.order {
		w.order[i] = i
	}
	if t.db.Dialect == database.Postgres {
		// In device order, so two nodes' writers never wait for each
		// other in a cycle.
		slices.SortFunc(w.order, func(a, b int) int { return strings.Compare(o.devs[segs[a].dev], o.devs[segs[b].dev]) })
	}
	w.from = make([]int, 0, len(segs)+1)
	for _, i := range w.order {
		w.from = append(w.from, len(t.chunks.pending))
		t.addSegment(segs[i], now)
	}
	w.from = append(w.from, len(t.chunks.pending))
	// The writer's rollups are hourly only (the pruner makes the minute
	// ones).
	w.hours = make(map[string][]hourKey)
	for k := range t.rollups.hours {
		w.hours[k.device] = append(w.hours[k.device], k)
	}
	for _, keys := range w.hours {
		slices.SortFunc(keys, compareHourKeys)
	}
	var err error
	w.stmts, err = prepareChunkWrites(ctx, tx, t.db.Dialect, "telemetry_chunks")
	return err
}

// chunks returns the pending chunks of the j-th segment written.
func (w *devicesWrite) chunks(t *Telemetry, j int) []*openChunk {
	return t.chunks.pending[w.from[j]:w.from[j+1]]
}

func (w *devicesWrite) close() {
	if w.stmts != nil {
		w.stmts.close()
	}
}

// eachMember calls fn with each member's raw key (without its quotes) and
// raw value of a compact object as ParseTelemetry writes it.
func eachMember(obj []byte, fn func(k, v []byte)) {
	i := 1
	for i < len(obj)-1 {
		kEnd := endOfString(obj, i)
		k := obj[i+1 : kEnd-1]
		i = kEnd + 1 // ':'
		vStart := i
		if obj[i] == '"' {
			i = endOfString(obj, i)
		} else {
			for i < len(obj)-1 && obj[i] != ',' {
				i++
			}
		}
		fn(k, obj[vStart:i])
		i++ // ','
	}
}

// endOfString returns the index just after the string starting at obj[i].
func endOfString(obj []byte, i int) int {
	for i++; i < len(obj); i++ {
		switch obj[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(obj)
}
