package devices

import (
	"context"
	"fmt"
	"time"
)

// write is the writer. It takes queued points every pollEvery (or
// sooner when the queue fills up), not one wake-up per point: a point is
// merged at once into its device's open chunk, hourly rollups and latest
// values, and its queue bytes are free again. What was taken is written
// in one transaction every FlushInterval, on Flush and on Close, and
// sooner when BatchSize points or maxBatchBytes of them were taken since
// the last write. Writing per interval rather than per batch costs a few
// statements per device and interval (its open chunk's row, its hourly
// rollups, its last values) whatever the rate. While points are being
// dropped it logs once per interval.
func (t *Telemetry) write() {
	defer t.wg.Done()
	tick := time.NewTicker(t.opts.FlushInterval)
	defer tick.Stop()
	poll := time.NewTicker(t.pollEvery())
	defer poll.Stop()
	maxBytes := t.maxBatchBytes()
	now := time.Now()
	full := func() bool { return t.held >= t.opts.BatchSize || t.heldBytes >= maxBytes }
	// take merges everything queued now, writing when full.
	take := func() error {
		var err error
		for {
			select {
			case p := <-t.queue:
				t.take(p, now)
				if full() {
					if e := t.commit(); e != nil {
						err = e
					}
				}
			default:
				return err
			}
		}
	}
	var lastDropped int64
	for {
		select {
		case <-poll.C:
			now = time.Now()
			_ = take()
		case <-t.wake:
			now = time.Now()
			_ = take()
		case <-tick.C:
			now = time.Now()
			_ = take()
			_ = t.commit()
			if d := count(t.m.dropped); d != lastDropped {
				t.log.Warn("telemetry: queue full, points routed but not stored",
					"dropped", d-lastDropped, "interval", t.opts.FlushInterval, "queue_size", t.opts.QueueSize,
					"queue_bytes", t.opts.QueueBytes)
				lastDropped = d
			}
		case done := <-t.flushes:
			now = time.Now()
			err := take()
			if e := t.commit(); e != nil {
				err = e
			}
			done <- err
		case <-t.stop:
			now = time.Now()
			err := take()
			if e := t.commit(); e != nil {
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
// that the queue never fills at any rate the broker routes (Add wakes the
// writer when it is a quarter full), seldom enough to cost nothing.
func (t *Telemetry) pollEvery() time.Duration {
	return max(min(t.opts.FlushInterval/4, 10*time.Millisecond), time.Millisecond)
}

// take merges a queued point into its device's open chunk, the hourly
// rollups and the latest values. Its bytes stay in the queue's budget
// until they are written (QueueBytes bounds what is taken and not yet
// written too), but for its queue entry's.
func (t *Telemetry) take(p queued, now time.Time) {
	t.chunks.add(p.device, p.ts, p.json, now, t.rollups)
	t.latest.add(p.device, p.ts, p.json, p.arrived, now)
	t.held++
	t.heldBytes += p.cost() - entryOverhead
	t.budget.give(entryOverhead)
}

// maxBatchBytes is the most bytes of points (their metrics' JSON) taken
// between two writes: a quarter of the queue's bound, at most 16 MiB, so
// that a burst of large payloads is written soon.
func (t *Telemetry) maxBatchBytes() int64 { return max(min(t.opts.QueueBytes/4, 16<<20), 1) }

// commit writes what was taken since the last write in one transaction:
// the open chunks that changed, the hourly rollups and, per device, the
// merged latest values and last_seen.
func (t *Telemetry) commit() error {
	if t.held == 0 {
		return nil
	}
	start := time.Now()
	points, bytes := t.held, t.heldBytes
	t.held, t.heldBytes = 0, 0
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := t.writeTx(ctx, start)
	// Written (or failed): the points' bytes are free for new ones.
	t.budget.give(bytes)
	if err != nil {
		t.m.writeErrors.Inc()
		t.log.Error("telemetry: write batch", "points", points, "error", err)
		return err
	}
	took := time.Since(start)
	t.m.stored.Add(float64(points))
	t.m.batches.Inc()
	t.m.lastBatch.Set(took.Seconds())
	t.log.Debug("telemetry: batch written", "points", points, "took", took, "queued", len(t.queue))
	return nil
}

func (t *Telemetry) writeTx(ctx context.Context, now time.Time) error {
	lasts := t.latest.patches()
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
		if err := t.last.UpdateLastValues(ctx, tx, lasts); err != nil {
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
		t.latest.evict(now.Add(-chunkSpan))
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
