package devices

import (
	"context"
	"encoding/json"
	"fmt"
)

// On PostgreSQL a command sent through one node may be delivered to its
// device, and answered, on another: each node's store tells the others of
// the commands it creates (they add them to their open set, so their
// broker hooks track them) and of the changes it commits (they wake their
// Wait callers, and forget a command that is done). When the listener
// (re)connects, the open commands are read again and every waiter looks
// at its command again. The command itself crosses the cluster's bus,
// often before the notification: the broker hook records its delivery
// by its topic meanwhile (RecordDelivered checks the device).

// commandsChannel is the PostgreSQL notification channel of commands.
const commandsChannel = "tether_commands"

// shareMax is the most changes one notification carries (PostgreSQL takes
// payloads up to 8,000 bytes).
const shareMax = 64

func (c *Commands) startSharing() {
	c.notes = startNotes(c.db, commandsChannel, c.log, func(ctx context.Context) {
		if err := c.loadOpen(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("commands: reading the open commands again failed", "error", err)
		}
		c.mu.Lock()
		for id, ch := range c.changed {
			close(ch)
			delete(c.changed, id)
		}
		c.mu.Unlock()
	}, c.received)
}

// share tells the other nodes of changes, a few dozen per notification.
func (c *Commands) share(changes []change) {
	if c.notes == nil {
		return
	}
	for len(changes) > 0 {
		n := min(len(changes), shareMax)
		c.notes.send(changes[:n])
		changes = changes[n:]
	}
}

// received applies another node's changes.
func (c *Commands) received(_ context.Context, body []byte) {
	var changes []change
	if json.Unmarshal(body, &changes) != nil {
		return
	}
	for _, ch := range changes {
		if !ValidID(ch.ID) {
			continue
		}
		if ch.Device != "" && !ch.Done && ValidID(ch.Device) {
			c.mu.Lock()
			c.open[ch.ID] = ch.Device
			c.mu.Unlock()
		}
		c.notify(ch.ID, ch.Done)
	}
}

// loadOpen adds the commands not yet done to the open set.
func (c *Commands) loadOpen(ctx context.Context) error {
	rows, err := c.db.R.QueryContext(ctx, `SELECT id, device_id FROM commands WHERE status IN ('pending', 'delivered')`)
	if err != nil {
		return fmt.Errorf("open commands: %w", err)
	}
	defer rows.Close()
	open := map[string]string{}
	for rows.Next() {
		var id, dev string
		if err := rows.Scan(&id, &dev); err != nil {
			return fmt.Errorf("open commands: %w", err)
		}
		open[id] = dev
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("open commands: %w", err)
	}
	c.mu.Lock()
	for id, dev := range open {
		c.open[id] = dev
	}
	c.mu.Unlock()
	return nil
}
