package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// commandBatch is the most queued changes written in one transaction.
const commandBatch = 512

// run writes queued changes in batches and closes expired commands every
// SweepInterval, until Close.
func (c *Commands) run() {
	defer c.wg.Done()
	tick := time.NewTicker(c.o.SweepInterval)
	defer tick.Stop()
	batch := make([]commandOp, 0, commandBatch)
	take := func() {
		for len(batch) < commandBatch {
			select {
			case op := <-c.queue:
				batch = append(batch, op)
			default:
				return
			}
		}
	}
	for {
		select {
		case op := <-c.queue:
			batch = append(batch[:0], op)
			take()
			c.apply(batch)
		case <-tick.C:
			if err := c.sweep(); err != nil {
				c.log.Error("commands: expire", "error", err)
			}
			if err := c.prune(); err != nil {
				c.log.Error("commands: prune", "error", err)
			}
		case <-c.stop:
			for {
				batch = batch[:0]
				take()
				if len(batch) == 0 {
					return
				}
				c.apply(batch)
			}
		}
	}
}

// change is a command whose watchers are woken after the commit (and the
// other nodes', commands_shared.go). Device is set for a new command.
type change struct {
	ID     string `json:"id"`
	Device string `json:"device,omitempty"`
	Done   bool   `json:"done,omitempty"`
}

// apply writes batch in one transaction, in order. A change the database
// refuses is dropped alone (batchWrite): counted as a db_error, logged
// (the first of each device per minute, never params or result), and a
// command it would have recorded is no longer open; the other changes are
// written. A fault of the database (not of one change) fails the whole
// batch, which is written again for a few seconds (retryTransient); when
// that fails too, all of its changes are counted as write_error.
func (c *Commands) apply(batch []commandOp) {
	defer func() {
		for i := range batch {
			c.budget.give(batch[i].cost())
		}
	}()
	done := make([]opDone, len(batch))
	var failed []itemFailure
	err := retryTransient(c.stop, c.log, "commands", 30*time.Second, func(ctx context.Context) (err error) {
		failed, err = (&batchWrite{name: "commands write", n: len(batch), one: func(ctx context.Context, tx *sql.Tx, i int) error {
			var err error
			done[i], err = c.applyOp(ctx, tx, &batch[i])
			return err
		}}).run(ctx, c.db.W)
		return err
	})
	if err != nil {
		c.m.writeErrors.Add(float64(len(batch)))
		c.log.Error("commands: write", "changes", len(batch), "error", err)
		for i := range batch {
			done[i] = notWritten(&batch[i])
		}
	}
	now := time.Now()
	for _, f := range failed {
		op := &batch[f.i]
		done[f.i] = notWritten(op)
		c.m.dbErrors.Inc()
		dev, id := op.cmd.DeviceID, op.cmd.ID
		if op.kind != 'c' {
			dev, _ = c.OpenFor(op.id)
			id = op.id
		}
		if c.logged.Allow(dev, now) {
			c.log.Warn("commands: change not written (first this minute for this device)",
				"device", dev, "command", id, "change", op.kindName(), "error", f.err)
		}
	}
	var changes []change
	var late, unknown int
	for _, d := range done {
		if d.count != nil {
			d.count.Inc()
		}
		switch d.count {
		case c.m.lateResponses:
			late++
		case c.m.unknownResponses:
			unknown++
		}
		if d.ch.ID != "" {
			changes = append(changes, d.ch)
		}
	}
	if late+unknown > 0 {
		c.log.Debug("commands: responses ignored", "late", late, "unknown", unknown)
	}
	for _, ch := range changes {
		c.notify(ch.ID, ch.Done)
	}
	c.share(changes)
}

// opDone is what a change did, counted and announced once committed: the
// counter it adds to (nil: none) and the change to wake watchers of and
// share (none if its ID is empty).
type opDone struct {
	count prometheus.Counter
	ch    change
}

// kindName names op's kind for a log.
func (op *commandOp) kindName() string {
	switch op.kind {
	case 'c':
		return "sent"
	case 'd':
		return "delivered"
	}
	return "response"
}

// notWritten is what a change that was not written does: a command it
// would have recorded is no longer open (a device registered later under
// its id must not inherit it; its responses are unknown).
func notWritten(op *commandOp) opDone {
	if op.kind == 'c' {
		return opDone{ch: change{ID: op.cmd.ID, Done: true}}
	}
	return opDone{}
}

// applyOp writes op in tx.
func (c *Commands) applyOp(ctx context.Context, tx *sql.Tx, op *commandOp) (opDone, error) {
	switch op.kind {
	case 'c':
		// Published over MQTT to devices/{id}/commands/...: not
		// recorded for an id that names no device (not registered,
		// or deleted meanwhile), which a device registered later
		// under it would otherwise inherit. The API refuses such a
		// command with 404 before it gets here.
		var one int
		switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = ?`, op.cmd.DeviceID).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			c.log.Debug("command not recorded: no such device", "device", op.cmd.DeviceID, "command", op.cmd.ID)
			return opDone{count: c.m.unknownDevice, ch: change{ID: op.cmd.ID, Done: true}}, nil
		case err != nil:
			return opDone{}, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
		}
		res, err := tx.ExecContext(ctx, insertCommand, cmdArgs(op.cmd)...)
		if err != nil {
			return opDone{}, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			c.grew(op.cmd.DeviceID)
			// Wake a Wait that found the command open but not yet
			// written.
			return opDone{ch: change{ID: op.cmd.ID, Device: op.cmd.DeviceID}}, nil
		}
		// The id was used before: if that command is done, it must not
		// stay open in memory.
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM commands WHERE id = ?`, op.cmd.ID).Scan(&status); err != nil {
			return opDone{}, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
		}
		if (Command{Status: status}).Done() {
			if err := c.recordReused(ctx, tx, op.cmd); err != nil {
				return opDone{}, err
			}
			return opDone{ch: change{ID: op.cmd.ID, Done: true}}, nil
		}
		return opDone{}, nil
	case 'd':
		res, err := tx.ExecContext(ctx, `UPDATE commands SET status = 'delivered', updated_at = ?
			WHERE id = ? AND device_id = ? AND status = 'pending'`, op.at.UnixMilli(), op.id, op.device)
		if err != nil {
			return opDone{}, fmt.Errorf("commands write: delivered %s: %w", op.id, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return opDone{count: c.m.delivered, ch: change{ID: op.id}}, nil
		}
		return opDone{}, nil
	case 'r':
		status, count := StatusSucceeded, c.m.succeeded
		if !op.ok {
			status, count = StatusFailed, c.m.failed
		}
		var result any
		if len(op.result) > 0 {
			result = string(op.result)
		}
		res, err := tx.ExecContext(ctx, `UPDATE commands SET status = ?, result = ?, error = ?, updated_at = ?
			WHERE id = ? AND device_id = ? AND status IN ('pending', 'delivered')`, status, result, op.errMsg, op.at.UnixMilli(), op.id, op.device)
		if err != nil {
			return opDone{}, fmt.Errorf("commands write: response %s: %w", op.id, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return opDone{count: count, ch: change{ID: op.id, Done: true}}, nil
		}
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM commands WHERE id = ? AND device_id = ?`, op.id, op.device).Scan(&exists); err != nil {
			return opDone{}, fmt.Errorf("commands write: response %s: %w", op.id, err)
		}
		if exists > 0 {
			return opDone{count: c.m.lateResponses}, nil
		}
		return opDone{count: c.m.unknownResponses}, nil
	}
	return opDone{}, nil
}

// sweep closes the commands whose time is up.
func (c *Commands) sweep() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now().UnixMilli()
	rows, err := c.db.W.QueryContext(ctx, `UPDATE commands SET status = 'expired', updated_at = ?
		WHERE status IN ('pending', 'delivered') AND expires_at <= ? RETURNING id`, now, now)
	if err != nil {
		return fmt.Errorf("commands expire: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("commands expire: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("commands expire: %w", err)
	}
	c.m.expired.Add(float64(len(ids)))
	changes := make([]change, 0, len(ids))
	for _, id := range ids {
		c.notify(id, true)
		changes = append(changes, change{ID: id, Done: true})
	}
	c.share(changes)
	return nil
}

// grew notes that device has a new command recorded, for prune.
func (c *Commands) grew(device string) {
	if c.o.MaxPerDevice <= 0 {
		return
	}
	c.mu.Lock()
	if c.grown == nil {
		c.grown = map[string]struct{}{}
	}
	c.grown[device] = struct{}{}
	c.mu.Unlock()
}

// pruneCommands deletes a device's commands older than its newest
// MaxPerDevice (the third argument is MaxPerDevice-1), along the index
// commands_device.
const pruneCommands = `DELETE FROM commands WHERE device_id = ? AND (created_at, id) <
	(SELECT created_at, id FROM commands WHERE device_id = ? ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?)
	RETURNING id`

// prune deletes, for each device with commands recorded since the last
// sweep, its oldest commands beyond MaxPerDevice, whatever their status:
// a client that may send commands (an operator, the API) cannot grow the
// history without bound, 64 KiB of params at a time, nor the commands
// held open in memory. A deleted open command is closed for its watchers
// (an answer to it is then unknown). Each device's first deletion a
// minute is logged; all are counted (tether_commands_pruned_total).
func (c *Commands) prune() error {
	c.mu.Lock()
	grown := c.grown
	c.grown = nil
	c.mu.Unlock()
	if len(grown) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var changes []change
	var err error
	for device := range grown {
		if err != nil {
			c.grew(device) // the next sweep tries again
			continue
		}
		var ids []string
		if ids, err = c.pruneDevice(ctx, device); err != nil {
			c.grew(device)
			continue
		}
		if len(ids) == 0 {
			continue
		}
		c.m.pruned.Add(float64(len(ids)))
		if c.logged.Allow("prune/"+device, time.Now()) {
			c.log.Warn("commands: the oldest commands of a device deleted: over commands.max_per_device (first this minute for this device)",
				"device", device, "deleted", len(ids), "max", c.o.MaxPerDevice)
		}
		for _, id := range ids {
			c.notify(id, true)
			changes = append(changes, change{ID: id, Done: true})
		}
	}
	c.share(changes)
	return err
}

// pruneDevice deletes device's commands beyond MaxPerDevice and returns
// their ids.
func (c *Commands) pruneDevice(ctx context.Context, device string) ([]string, error) {
	rows, err := c.db.W.QueryContext(ctx, pruneCommands, device, device, c.o.MaxPerDevice-1)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", device, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("prune %s: %w", device, err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("prune %s: %w", device, err)
	}
	return ids, nil
}

// recordReused records cmd, published over MQTT with the id of a command
// that is done: the device received it under that id, its answer is
// taken as a late one to that command, and yet it is recorded, under an
// id of its own, failed, saying so. A command sent is never missing from
// the history, whatever id its sender chose (SPEC §7).
func (c *Commands) recordReused(ctx context.Context, tx *sql.Tx, cmd Command) error {
	reused := cmd.ID
	cmd.ID, cmd.Status = NewCommandID(), StatusFailed
	msg := "sent over MQTT with the id of an earlier command, " + reused + ": its answer cannot be told from that command's, which is done"
	if _, err := tx.ExecContext(ctx, `INSERT INTO commands(id, device_id, name, params, status, created_at, updated_at, expires_at, error)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, append(cmdArgs(cmd), msg)...); err != nil {
		return fmt.Errorf("commands write: insert %s (reusing %s): %w", cmd.ID, reused, err)
	}
	c.m.failed.Inc()
	c.grew(cmd.DeviceID)
	return nil
}
