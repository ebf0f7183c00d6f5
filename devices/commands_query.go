package devices

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Get returns command id, or ErrNotFound.
func (c *Commands) Get(ctx context.Context, id string) (Command, error) {
	cmd, err := scanCommand(c.db.R.QueryRowContext(ctx, `SELECT `+commandColumns+` FROM commands WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Command{}, fmt.Errorf("command %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Command{}, fmt.Errorf("get command %s: %w", id, err)
	}
	return cmd, nil
}

const commandColumns = `id, device_id, name, params, status, result, error, created_at, updated_at, expires_at`

func scanCommand(s interface{ Scan(...any) error }) (Command, error) {
	var c Command
	var params string
	var result sql.NullString
	var created, updated, expires int64
	if err := s.Scan(&c.ID, &c.DeviceID, &c.Name, &params, &c.Status, &result, &c.Error, &created, &updated, &expires); err != nil {
		return c, err
	}
	c.Params = json.RawMessage(params)
	if result.Valid {
		c.Result = json.RawMessage(result.String)
	}
	c.CreatedAt, c.UpdatedAt, c.ExpiresAt = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC(), time.UnixMilli(expires).UTC()
	return c, nil
}

// List returns device's commands, newest first, limit (1 to MaxPage; 0
// means 100) per page, and the cursor of the next page ("" at the end).
func (c *Commands) List(ctx context.Context, device string, limit int, cursor string) ([]Command, string, error) {
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > 1000:
		return nil, "", invalid("limit", "must be between 1 and 1000")
	}
	beforeTS, beforeID := int64(1<<62), ""
	if cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(cursor)
		ts, id, ok := strings.Cut(string(b), ":")
		n, perr := strconv.ParseInt(ts, 10, 64)
		if err != nil || !ok || perr != nil {
			return nil, "", invalid("cursor", "not a cursor this server issued")
		}
		beforeTS, beforeID = n, id
	}
	rows, err := c.db.R.QueryContext(ctx, `SELECT `+commandColumns+` FROM commands
		WHERE device_id = ? AND (created_at < ? OR (created_at = ? AND id < ?))
		ORDER BY created_at DESC, id DESC LIMIT ?`, device, beforeTS, beforeTS, beforeID, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list commands: %w", err)
	}
	defer rows.Close()
	out := []Command{}
	for rows.Next() {
		cmd, err := scanCommand(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list commands: %w", err)
		}
		out = append(out, cmd)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list commands: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		l := out[limit-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(l.CreatedAt.UnixMilli(), 10) + ":" + l.ID))
	}
	return out, next, nil
}

// Wait returns command id once it is done, or when ctx ends (then with the
// command as it is and ctx's error). A command recorded from MQTT is open
// in memory a moment before its row is written: Wait waits for it rather
// than answering "not found".
func (c *Commands) Wait(ctx context.Context, id string) (Command, error) {
	for {
		ch := c.watch(id)
		cmd, err := c.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			if _, open := c.OpenFor(id); !open {
				c.unwatch(id, ch)
				return cmd, err // a command that does not exist is not watched
			}
		} else if err != nil || cmd.Done() {
			c.unwatch(id, ch)
			if err == nil {
				c.forget(id)
			}
			return cmd, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cmd, ctx.Err()
		}
	}
}

// watch returns a channel closed at command id's next change.
func (c *Commands) watch(id string) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.changed[id]
	if !ok {
		ch = make(chan struct{})
		c.changed[id] = ch
	}
	return ch
}

// unwatch drops ch, the watch of id, if no change has closed it yet. It
// closes it, so that other waiters sharing it look again rather than wait
// for a change that has already happened.
func (c *Commands) unwatch(id string, ch chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed[id] == ch {
		close(ch)
		delete(c.changed, id)
	}
}

// notify wakes the watchers of id; done forgets it as an open command.
// forget drops command id from the open set once its stored row is done.
// The writer does it too, right after its commit; Wait does it as well so
// that a caller who saw the command done never finds it still open in the
// moment between the commit and the writer's notify.
func (c *Commands) forget(id string) {
	c.mu.Lock()
	delete(c.open, id)
	c.mu.Unlock()
}

func (c *Commands) notify(id string, done bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.changed[id]; ok {
		close(ch)
		delete(c.changed, id)
	}
	if done {
		delete(c.open, id)
	}
}
