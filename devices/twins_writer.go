package devices

import (
	"bytes"
	"context"
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
// transaction. When a patch fails that transaction (one the database's
// JSON functions refuse), it merges the batch again, each patch under a
// savepoint of its own, so that only the patches that fail are dropped,
// counted as errors and logged (the first of each device per minute,
// never the payload), and the other devices' patches are kept.
func (t *Twins) write(batch []twinPatch) {
	defer func() {
		for i := range batch {
			t.budget.give(batch[i].cost())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if t.db.Dialect == database.Postgres {
		// In device order (each device's patches keep theirs), so two
		// nodes' writers never wait for each other in a cycle.
		batch = slices.Clone(batch)
		slices.SortStableFunc(batch, func(a, b twinPatch) int { return strings.Compare(a.device, b.device) })
	}
	now := time.Now()
	failed, refused, err := t.merge(ctx, batch, now.UnixMilli(), false)
	var pe *patchError
	if errors.As(err, &pe) {
		failed, refused, err = t.merge(ctx, batch, now.UnixMilli(), true)
	}
	if err != nil {
		t.writeErrors.Add(float64(len(batch)))
		// Not one device's fault: keyed by no device.
		if t.logged.Allow("", now) {
			t.log.Error("twins: merge reported (first failure this minute)", "patches", len(batch), "error", err)
		}
		return
	}
	t.merged.Add(float64(len(batch) - len(failed) - len(refused)))
	t.writeErrors.Add(float64(len(failed)))
	t.rejected.Add(float64(len(refused)))
	for _, f := range refused {
		if t.logged.Allow(f.device, now) {
			t.log.Warn("twins: reported patch refused (first this minute for this device)",
				"device", f.device, "bytes", f.bytes, "error", f.err)
		}
	}
	for _, f := range failed {
		if t.logged.Allow(f.device, now) {
			t.log.Warn("twins: reported patch not merged (first this minute for this device)",
				"device", f.device, "bytes", f.bytes, "error", f.err)
		}
	}
}

// patchError is a patch that failed its statement.
type patchError struct {
	device string
	bytes  int
	err    error
}

func (e *patchError) Error() string { return fmt.Sprintf("patch of %s: %v", e.device, e.err) }
func (e *patchError) Unwrap() error { return e.err }

// errTwinState is a reported patch refused by MaxTwinState.
var errTwinState = fmt.Errorf("the reported state would be larger than %d bytes", MaxTwinState)

// merge merges batch in one transaction. Without isolate, the first patch
// that fails fails it (a *patchError); with isolate, each patch is under a
// savepoint and those that fail are rolled back and returned, the others
// committed. Patches that would grow a reported state past MaxTwinState
// change nothing and are returned as refused. Any other error (begin,
// savepoint, commit) fails the whole batch.
func (t *Twins) merge(ctx context.Context, batch []twinPatch, now int64, isolate bool) (failed, refused []*patchError, err error) {
	tx, err := t.db.W.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	defer tx.Rollback()
	exec := func(q string) error {
		_, err := tx.ExecContext(ctx, q)
		return err
	}
	for _, p := range batch {
		if isolate {
			if err := exec(`SAVEPOINT twin_patch`); err != nil {
				return nil, nil, err
			}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO twins(device_id, reported, reported_version, updated_at)
			VALUES (?1, json_patch('{}', ?2), 1, ?3)
			ON CONFLICT(device_id) DO UPDATE SET reported = json_patch(twins.reported, ?2),
				reported_version = twins.reported_version + 1, updated_at = ?3
			WHERE `+twinStateFits("reported"),
			p.device, string(p.patch), now, MaxTwinState)
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		if err != nil {
			pe := &patchError{device: p.device, bytes: len(p.patch), err: err}
			if !isolate || ctx.Err() != nil {
				return nil, nil, pe
			}
			if err := exec(`ROLLBACK TO SAVEPOINT twin_patch`); err != nil {
				return nil, nil, err
			}
			failed = append(failed, pe)
		} else if n == 0 {
			refused = append(refused, &patchError{device: p.device, bytes: len(p.patch), err: errTwinState})
		}
		if isolate {
			if err := exec(`RELEASE SAVEPOINT twin_patch`); err != nil {
				return nil, nil, err
			}
		}
	}
	return failed, refused, tx.Commit()
}
