package devices

import (
	"context"
	"fmt"
	"time"
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
		for n := len(t.queue); n > 0; n-- {
			select {
			case p := <-t.queue:
				batch = append(batch, p)
				batchBytes += p.cost()
				if full() {
					if e := flush(); e != nil {
						err = e
					}
				}
			default:
				return err
			}
		}
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
// and per device the merged latest values and last_seen.
func (t *Telemetry) writeBatch(batch []queued) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := t.writeTx(ctx, batch)
	if err != nil {
		t.m.writeErrors.Inc()
		t.log.Error("telemetry: write batch", "points", len(batch), "error", err)
		return err
	}
	took := time.Since(start)
	t.m.stored.Add(float64(len(batch)))
	t.m.batches.Inc()
	t.m.lastBatch.Set(took.Seconds())
	t.log.Debug("telemetry: batch written", "points", len(batch), "took", took, "queued", len(t.queue))
	return nil
}

func (t *Telemetry) writeTx(ctx context.Context, batch []queued) error {
	// Grouped by device, each device's points in time order.
	o := t.order
	o.group(batch)
	defer o.done()
	now := time.Now()
	for i, d := range o.devs {
		for _, k := range o.points(i) {
			p := &batch[k]
			t.chunks.add(d, p.ts, p.json, now, t.rollups)
		}
	}
	ok := false
	defer func() {
		t.chunks.written(ok)
		t.rollups.written(ok)
	}()

	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("telemetry write: begin: %w", err)
	}
	defer tx.Rollback()
	if err := t.chunks.write(ctx, tx); err != nil {
		return err
	}
	if err := t.rollups.write(ctx, tx); err != nil {
		return err
	}
	if t.last != nil {
		if err := t.last.UpdateLastValues(ctx, tx, o.lastValues()); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("telemetry write: commit: %w", err)
	}
	ok = true
	// Chunks of devices that stopped reporting are complete on disk.
	if count(t.m.batches)%64 == 0 {
		t.chunks.evict(now.Add(-chunkSpan))
	}
	return nil
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
