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
// the points taken in one transaction every FlushInterval, on Flush and
// on Close, and sooner when the batch is full (BatchSize points or
// maxBatchBytes). While points are being dropped it logs once per
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

// maxBatchBytes is the most bytes of points one transaction writes: half
// the queue's bound, at most 32 MiB (a second of points at 200,000 a
// second), so that a batch of large payloads does not hold the writer
// (and its memory) for long.
func (t *Telemetry) maxBatchBytes() int64 { return max(min(t.opts.QueueBytes/2, 32<<20), 1) }

// writeBatch writes batch in one transaction: every point into history,
// and per device the merged latest values and last_seen. A device whose
// writes the database refuses loses this batch's points alone
// (batchWrite): they are counted as db_error and logged (the first of
// each device per minute, never the values); the other devices' points
// are written. A fault of the database fails the transaction, which is
// written again, from what was committed before, for a few seconds
// (retryTransient); meanwhile points queue up to the queue's bounds.
func (t *Telemetry) writeBatch(batch []queued) error {
	start := time.Now()
	var lost int
	err := retryTransient(t.stop, t.log, "telemetry", time.Minute, func(ctx context.Context) (err error) {
		lost, err = t.writeTx(ctx, batch)
		return err
	})
	if err != nil {
		t.m.writeErrors.Inc()
		t.log.Error("telemetry: write batch", "points", len(batch), "error", err)
		return err
	}
	took := time.Since(start)
	t.m.stored.Add(float64(len(batch) - lost))
	t.m.batches.Inc()
	t.m.lastBatch.Set(took.Seconds())
	t.log.Debug("telemetry: batch written", "points", len(batch), "took", took, "queued", t.queue.len())
	return nil
}

// writeTx writes batch and returns how many of its points were dropped
// because the database refused their device's writes.
func (t *Telemetry) writeTx(ctx context.Context, batch []queued) (lost int, err error) {
	// Grouped by device, each device's points in time order.
	o := t.order
	o.group(batch)
	defer o.done()
	now := time.Now()
	for i := range o.devs {
		t.addPoints(i, now)
	}
	var lasts []LastValue
	if t.last != nil {
		lasts = o.lastValues()
	}
	ok := false
	defer func() {
		t.chunks.written(ok)
		t.rollups.written(ok)
	}()
	var dev devicesWrite
	defer dev.close()
	failed, err := (&batchWrite{name: "telemetry write", n: len(o.devs),
		all: func(ctx context.Context, tx *sql.Tx) error {
			ctx = stmtContext(t.db.Dialect, ctx)
			if err := t.chunks.write(ctx, tx); err != nil {
				return err
			}
			if err := t.rollups.write(ctx, tx); err != nil {
				return err
			}
			if t.last != nil {
				return t.last.UpdateLastValues(ctx, tx, lasts)
			}
			return nil
		},
		again: func(ctx context.Context, tx *sql.Tx) error {
			return dev.start(stmtContext(t.db.Dialect, ctx), tx, t, now)
		},
		one: func(ctx context.Context, tx *sql.Tx, j int) error {
			ctx = stmtContext(t.db.Dialect, ctx)
			i := dev.order[j]
			if err := t.chunks.writeChunks(ctx, tx, dev.stmts, dev.chunks(t, j)); err != nil {
				return err
			}
			if err := t.rollups.writeHours(ctx, tx, dev.hours[o.devs[i]]); err != nil {
				return err
			}
			if t.last != nil {
				return t.last.UpdateLastValues(ctx, tx, lasts[i:i+1])
			}
			return nil
		},
	}).run(ctx, t.db.W)
	if err != nil {
		return 0, err
	}
	ok = true
	for _, f := range failed {
		i := dev.order[f.i]
		t.chunks.forget(dev.chunks(t, f.i))
		n := len(o.points(i))
		lost += n
		if t.logged.Allow(o.devs[i], now) {
			t.log.Warn("telemetry: points not stored (first this minute for this device)",
				"device", o.devs[i], "points", n, "error", f.err)
		}
	}
	t.m.dbErrors.Add(float64(lost))
	// Chunks of devices that stopped reporting are complete on disk.
	if count(t.m.batches)%64 == 0 {
		t.chunks.evict(now.Add(-chunkSpan))
	}
	return lost, nil
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

// addPoints adds the points of the batch's device i to its open chunk
// and to the hourly rollups, and encodes them (chunkBuilder.encodeNew).
func (t *Telemetry) addPoints(i int, now time.Time) {
	o := t.order
	d := o.devs[i]
	pts := o.points(i)
	from := len(t.chunks.pending)
	for k := range pts {
		p := &pts[k]
		t.chunks.add(d, p.ts, p.json, now, t.rollups)
	}
	t.chunks.encodeNew(from)
}

// devicesWrite is a batch written again device by device, each under a
// savepoint (batchWrite): the devices in the order they are written, the
// pending chunks and hourly rollups of each, and the statements.
type devicesWrite struct {
	order []int // the batch's device indexes, by id on PostgreSQL
	from  []int // chunks.pending[from[j]:from[j+1]] are order[j]'s
	hours map[string][]hourKey
	stmts *chunkStmts
}

// start starts the batch again in tx: what the first transaction wrote
// was rolled back, so the writer starts from what was committed before,
// as after a failed batch (the devices' open chunks forgotten), and adds
// the points again, device by device.
func (w *devicesWrite) start(ctx context.Context, tx *sql.Tx, t *Telemetry, now time.Time) error {
	t.chunks.written(false)
	t.rollups.written(false)
	o := t.order
	w.order = make([]int, len(o.devs))
	for i := range w.order {
		w.order[i] = i
	}
	if t.db.Dialect == database.Postgres {
		// In device order, so two nodes' writers never wait for each
		// other in a cycle.
		slices.SortFunc(w.order, func(a, b int) int { return strings.Compare(o.devs[a], o.devs[b]) })
	}
	w.from = make([]int, 0, len(o.devs)+1)
	for _, i := range w.order {
		w.from = append(w.from, len(t.chunks.pending))
		t.addPoints(i, now)
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

// chunks returns the pending chunks of the j-th device written.
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
