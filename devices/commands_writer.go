package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
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

func (c *Commands) apply(batch []commandOp) {
	defer func() {
		for i := range batch {
			c.budget.give(batch[i].cost())
		}
	}()
	changes, err := c.applyTx(batch)
	if err != nil {
		c.m.writeErrors.Inc()
		c.log.Error("commands: write", "changes", len(batch), "error", err)
		return
	}
	for _, ch := range changes {
		c.notify(ch.ID, ch.Done)
	}
	c.share(changes)
}

func (c *Commands) applyTx(batch []commandOp) ([]change, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := c.db.W.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("commands write: begin: %w", err)
	}
	defer tx.Rollback()
	var changes []change
	var late, unknown, ok, failed, delivered int64
	for _, op := range batch {
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
				c.m.unknownDevice.Inc()
				c.log.Debug("command not recorded: no such device", "device", op.cmd.DeviceID, "command", op.cmd.ID)
				changes = append(changes, change{ID: op.cmd.ID, Done: true})
				continue
			case err != nil:
				return nil, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
			}
			res, err := tx.ExecContext(ctx, insertCommand, cmdArgs(op.cmd)...)
			if err != nil {
				return nil, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				// Wake a Wait that found the command open but not yet
				// written.
				changes = append(changes, change{ID: op.cmd.ID, Device: op.cmd.DeviceID})
			} else {
				// The id was used before: if that command is done, it
				// must not stay open in memory.
				var status string
				if err := tx.QueryRowContext(ctx, `SELECT status FROM commands WHERE id = ?`, op.cmd.ID).Scan(&status); err != nil {
					return nil, fmt.Errorf("commands write: insert %s: %w", op.cmd.ID, err)
				}
				if (Command{Status: status}).Done() {
					changes = append(changes, change{ID: op.cmd.ID, Done: true})
				}
			}
		case 'd':
			res, err := tx.ExecContext(ctx, `UPDATE commands SET status = 'delivered', updated_at = ?
				WHERE id = ? AND device_id = ? AND status = 'pending'`, op.at.UnixMilli(), op.id, op.device)
			if err != nil {
				return nil, fmt.Errorf("commands write: delivered %s: %w", op.id, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				delivered++
				changes = append(changes, change{ID: op.id})
			}
		case 'r':
			status := StatusSucceeded
			if !op.ok {
				status = StatusFailed
			}
			var result any
			if len(op.result) > 0 {
				result = string(op.result)
			}
			res, err := tx.ExecContext(ctx, `UPDATE commands SET status = ?, result = ?, error = ?, updated_at = ?
				WHERE id = ? AND device_id = ? AND status IN ('pending', 'delivered')`, status, result, op.errMsg, op.at.UnixMilli(), op.id, op.device)
			if err != nil {
				return nil, fmt.Errorf("commands write: response %s: %w", op.id, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				if op.ok {
					ok++
				} else {
					failed++
				}
				changes = append(changes, change{ID: op.id, Done: true})
				continue
			}
			var exists int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM commands WHERE id = ? AND device_id = ?`, op.id, op.device).Scan(&exists); err != nil {
				return nil, fmt.Errorf("commands write: response %s: %w", op.id, err)
			}
			if exists > 0 {
				late++
			} else {
				unknown++
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commands write: commit: %w", err)
	}
	c.m.lateResponses.Add(float64(late))
	c.m.unknownResponses.Add(float64(unknown))
	c.m.succeeded.Add(float64(ok))
	c.m.failed.Add(float64(failed))
	c.m.delivered.Add(float64(delivered))
	if late+unknown > 0 {
		c.log.Debug("commands: responses ignored", "late", late, "unknown", unknown)
	}
	return changes, nil
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
