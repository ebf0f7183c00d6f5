package devices

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// RecordReported queues a reported-state patch from device (the payload of
// devices/{id}/twin/reported). It never blocks; a payload CheckTwinPatch
// refuses, or a full queue, is counted and dropped (false).
func (t *Twins) RecordReported(device string, patch []byte) bool {
	if _, err := CheckTwinPatch("reported", patch); err != nil {
		t.rejected.Inc()
		return false
	}
	select {
	case <-t.stop:
		t.dropped.Inc()
		return false
	default:
	}
	p := twinPatch{device: device, patch: bytes.Clone(patch)}
	if !t.budget.take(p.cost()) {
		t.dropped.Inc()
		return false
	}
	select {
	case t.queue <- p:
		return true
	default:
		t.budget.give(p.cost())
		t.dropped.Inc()
		return false
	}
}

// cost is the bytes p holds, for the queue's byte bound.
func (p *twinPatch) cost() int64 { return int64(len(p.device)+len(p.patch)) + entryOverhead }

// Flush returns once every reported patch queued before the call is
// merged.
func (t *Twins) Flush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case t.flushes <- done:
	case <-t.stop:
		return errors.New("twins flush: closed")
	case <-ctx.Done():
		return fmt.Errorf("twins flush: %w", ctx.Err())
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("twins flush: %w", ctx.Err())
	}
}

// Stats returns reported patches merged, dropped (queue full) and rejected
// (not a JSON object of MaxTwinPatch bytes and MaxTwinDepth levels at
// most, or growing the reported state past MaxTwinState).
func (t *Twins) Stats() (merged, dropped, rejected int64) {
	return count(t.merged), count(t.dropped), count(t.rejected)
}

func (t *Twins) run() {
	defer t.wg.Done()
	batch := make([]twinPatch, 0, 256)
	take := func() {
		for len(batch) < 256 {
			select {
			case p := <-t.queue:
				batch = append(batch, p)
			default:
				return
			}
		}
	}
	for {
		select {
		case p := <-t.queue:
			batch = append(batch[:0], p)
			take()
			t.write(batch)
		case done := <-t.flushes:
			for {
				batch = batch[:0]
				take()
				if len(batch) == 0 {
					break
				}
				t.write(batch)
			}
			close(done)
		case <-t.stop:
			for {
				batch = batch[:0]
				take()
				if len(batch) == 0 {
					return
				}
				t.write(batch)
			}
		}
	}
}

// write merges batch's patches in order, one version each, in one
// transaction. A patch that fails it (one the database's JSON functions
// refuse) is dropped alone (batchWrite), counted as an error and logged
// (the first of each device per minute, never the payload); the other
// devices' patches are kept.
func (t *Twins) write(batch []twinPatch) {
	defer func() {
		for i := range batch {
			t.budget.give(batch[i].cost())
		}
	}()
	if t.db.Dialect == database.Postgres {
		// In device order (each device's patches keep theirs), so two
		// nodes' writers never wait for each other in a cycle.
		batch = slices.Clone(batch)
		slices.SortStableFunc(batch, func(a, b twinPatch) int { return strings.Compare(a.device, b.device) })
	}
	now := time.Now()
	// refused[i]: patch i would grow its reported state past
	// MaxTwinState and changed nothing (set again by each pass).
	refused := make([]bool, len(batch))
	// A fault of the database fails the whole batch, which is merged
	// again, from what was committed, for a few seconds (retryTransient).
	var failed []itemFailure
	err := retryTransient(t.stop, t.log, "twins", 30*time.Second, func(ctx context.Context) (err error) {
		failed, err = (&batchWrite{name: "twins merge", n: len(batch), one: func(ctx context.Context, tx *sql.Tx, i int) error {
			p := &batch[i]
			res, err := tx.ExecContext(ctx, `INSERT INTO twins(device_id, reported, reported_version, updated_at)
			VALUES (?1, json_patch('{}', ?2), 1, ?3)
			ON CONFLICT(device_id) DO UPDATE SET reported = json_patch(twins.reported, ?2),
				reported_version = twins.reported_version + 1, updated_at = ?3
			WHERE `+twinStateFits("reported"),
				p.device, string(p.patch), now.UnixMilli(), MaxTwinState)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			refused[i] = err == nil && n == 0
			return err
		}}).run(ctx, t.db.W)
		return err
	})
	if err != nil {
		t.writeErrors.Add(float64(len(batch)))
		// Not one device's fault: keyed by no device.
		if t.logged.Allow("", now) {
			t.log.Error("twins: merge reported (first failure this minute)", "patches", len(batch), "error", err)
		}
		return
	}
	for _, f := range failed {
		refused[f.i] = false // failed, not refused
	}
	nRefused := 0
	for i, r := range refused {
		if !r {
			continue
		}
		nRefused++
		if p := &batch[i]; t.logged.Allow(p.device, now) {
			t.log.Warn("twins: reported patch refused (first this minute for this device)",
				"device", p.device, "bytes", len(p.patch), "error", errTwinState)
		}
	}
	t.merged.Add(float64(len(batch) - len(failed) - nRefused))
	t.writeErrors.Add(float64(len(failed)))
	t.rejected.Add(float64(nRefused))
	for _, f := range failed {
		p := &batch[f.i]
		if t.logged.Allow(p.device, now) {
			t.log.Warn("twins: reported patch not merged (first this minute for this device)",
				"device", p.device, "bytes", len(p.patch), "error", f.err)
		}
	}
}

// errTwinState is a reported patch refused by MaxTwinState.
var errTwinState = fmt.Errorf("the reported state would be larger than %d bytes", MaxTwinState)
