package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// How a batch that a fault of the database failed is written again.
const (
	retryFor   = 5 * time.Second         // after its first failure, at most
	retryFirst = 50 * time.Millisecond   // the first wait, doubled each time
	retryMax   = 1000 * time.Millisecond // the longest wait
)

// retryTransient calls write, and calls it again while it fails with a
// fault of the database rather than of the batch (database.IsTransient:
// busy, locked, the connection lost, a restart), waiting 50 ms, then
// twice as long each time up to 1 s, for at most retryFor after the first
// failure, so that a short fault loses nothing. Each call has a context
// of its own, which ends after each. Closing stop (the store's Close) ends the
// waiting: the last error is returned. The first retry of a batch is
// logged at WARN under name (the store).
func retryTransient(stop <-chan struct{}, log *slog.Logger, name string, each time.Duration,
	write func(ctx context.Context) error) error {
	var deadline time.Time
	wait := retryFirst
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), each)
		err := write(ctx)
		cancel()
		if err == nil || !database.IsTransient(err) {
			if err == nil && attempt > 1 {
				log.Info(name+": batch written after a fault of the database", "attempts", attempt)
			}
			return err
		}
		if attempt == 1 {
			deadline = time.Now().Add(retryFor)
			log.Warn(name+": fault of the database, writing the batch again", "error", err)
		}
		if time.Now().Add(wait).After(deadline) {
			return err
		}
		timer := time.NewTimer(wait)
		select {
		case <-stop:
			timer.Stop()
			return err
		case <-timer.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// batchWrite is one batch of a batch writer (twins, commands, telemetry),
// written so that an item the database refuses loses only itself: the
// batch is written in one transaction, the fastest way; only when one of
// its statements fails is it written again, in a new transaction, each
// item under a savepoint of its own.
type batchWrite struct {
	// name starts the errors of begin, savepoints and commit.
	name string
	// n is how many items the batch holds.
	n int
	// all writes the whole batch in tx; nil writes each item with one,
	// in order.
	all func(ctx context.Context, tx *sql.Tx) error
	// again, if not nil, is called in the second transaction before its
	// first item: to start again from what the first left behind, and to
	// prepare statements for one. An error fails the batch.
	again func(ctx context.Context, tx *sql.Tx) error
	// one writes item i in tx.
	one func(ctx context.Context, tx *sql.Tx, i int) error
}

// itemFailure is an item of a batch that the database refused, rolled
// back alone.
type itemFailure struct {
	i   int // its index in the batch
	err error
}

// run writes the batch, and returns the items the database refused (the
// others are committed), or the error that failed the whole batch.
//
// The first transaction has no savepoint, so a batch that works costs
// nothing more. When a statement fails it (not begin or commit, and the
// context not done), the batch is written again item by item, each
// under a savepoint: an item whose statements fail is rolled back to its
// savepoint and returned, and the next goes on. The second transaction
// is also the one retry of a batch whose first lost its connection
// midway. An item that fails there with an error that is not its own
// (database.IsTransient: the connection lost, busy, locked, disk full, a
// timeout) fails the whole batch, as it did before there were savepoints:
// no item is dropped for a fault of the database, and no item waits on a
// fault every following item would meet (SQLite's busy_timeout is 10 s).
//
// A batch that outlasts ctx fails with an error that says so: database/sql
// rolls its transaction back when ctx ends, and on SQLite the statements
// run on to their end (stmtContext), so the next one found the
// transaction gone ("transaction has already been committed or rolled
// back", which said nothing of time; seen under a flood of backdated
// samples of 64 metrics, each point new hourly rows).
func (w *batchWrite) run(ctx context.Context, db *sql.DB) ([]itemFailure, error) {
	_, stmt, err := w.pass(ctx, db, false)
	if !stmt || ctx.Err() != nil {
		return nil, w.outOfTime(ctx, err)
	}
	failed, _, err := w.pass(ctx, db, true)
	if err != nil {
		return nil, w.outOfTime(ctx, err)
	}
	return failed, nil
}

// outOfTime returns err, or if ctx ended and the transaction is gone for
// it, an error that says so (not a context error: such a batch is not
// written again, as before).
func (w *batchWrite) outOfTime(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil || !errors.Is(err, sql.ErrTxDone) {
		return err
	}
	return fmt.Errorf("%s: the batch took longer than its transaction may (%v), which was rolled back: too much to write at once", w.name, ctx.Err())
}

// pass writes the batch in one transaction: with all, or (isolate) item
// by item under savepoints. stmt reports that a statement of the batch
// failed (not begin, a savepoint or commit).
func (w *batchWrite) pass(ctx context.Context, db *sql.DB, isolate bool) (failed []itemFailure, stmt bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("%s: begin: %w", w.name, err)
	}
	defer tx.Rollback()
	exec := func(q string) error {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %s: %w", w.name, q, err)
		}
		return nil
	}
	switch {
	case !isolate && w.all != nil:
		if err := w.all(ctx, tx); err != nil {
			return nil, true, err
		}
	case !isolate:
		for i := range w.n {
			if err := w.one(ctx, tx, i); err != nil {
				return nil, true, err
			}
		}
	default:
		if w.again != nil {
			if err := w.again(ctx, tx); err != nil {
				return nil, false, err
			}
		}
		for i := range w.n {
			if err := exec(`SAVEPOINT batch_item`); err != nil {
				return nil, false, err
			}
			if err := w.one(ctx, tx, i); err != nil {
				if ctx.Err() != nil || database.IsTransient(err) {
					return nil, true, err
				}
				if err := exec(`ROLLBACK TO SAVEPOINT batch_item`); err != nil {
					return nil, false, err
				}
				failed = append(failed, itemFailure{i: i, err: err})
			}
			if err := exec(`RELEASE SAVEPOINT batch_item`); err != nil {
				return nil, false, err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, false, fmt.Errorf("%s: commit: %w", w.name, err)
	}
	return failed, false, nil
}
