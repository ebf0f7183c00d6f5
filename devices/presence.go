package devices

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Presence is one connect or disconnect of a device, as the broker saw it.
type Presence struct {
	DeviceID        string
	Online          bool
	At              time.Time
	Transport       string // "tcp", "tls", "ws", "wss"
	RemoteAddr      string
	ProtocolVersion int
}

// presenceBatch is the most records the writer puts in one transaction.
const presenceBatch = 4096

// RecordPresence queues p to be written to the device's row by the
// registry's batch writer. It never blocks and never drops: pending records
// are kept per device, a newer one replacing an older, so the queue is
// bounded by the number of devices. Safe to call from an MQTT hook.
func (r *Registry) RecordPresence(p Presence) {
	r.presMu.Lock()
	if r.closed {
		r.presMu.Unlock()
		r.presenceDropped.Add(1)
		return
	}
	if _, dup := r.pending[p.DeviceID]; !dup {
		r.pendingOrder = append(r.pendingOrder, p.DeviceID)
	}
	r.pending[p.DeviceID] = p
	select { // under presMu: Close closes presenceWake under it too
	case r.presenceWake <- struct{}{}:
	default: // the writer is already due to run
	}
	r.presMu.Unlock()
	if f := r.onOnline.Load(); f != nil && p.Online {
		(*f)(p.DeviceID)
	}
}

// PresenceStats returns how many presence records were written and how
// many were dropped (recorded after Close).
func (r *Registry) PresenceStats() (written, dropped int64) {
	return r.presenceWritten.Load(), r.presenceDropped.Load()
}

// writePresence writes pending records whenever woken, until Close; then
// it writes what is left and returns.
func (r *Registry) writePresence() {
	defer close(r.presenceDone)
	for {
		_, open := <-r.presenceWake
		for {
			batch, order := r.takePresence()
			if len(order) == 0 {
				break
			}
			if err := r.flushPresence(batch, order); err != nil {
				r.log.Error("presence: write", "records", len(order), "error", err)
			} else {
				r.presenceWritten.Add(int64(len(order)))
			}
		}
		if !open {
			return
		}
	}
}

// takePresence takes up to presenceBatch pending records, oldest first.
func (r *Registry) takePresence() (map[string]Presence, []string) {
	r.presMu.Lock()
	defer r.presMu.Unlock()
	n := min(len(r.pendingOrder), presenceBatch)
	order := slices.Clone(r.pendingOrder[:n])
	r.pendingOrder = r.pendingOrder[n:]
	batch := make(map[string]Presence, n)
	for _, id := range order {
		batch[id] = r.pending[id]
		delete(r.pending, id)
	}
	return batch, order
}

// On PostgreSQL several nodes write presence: each device row names the
// node the device last connected to (devices.node), a node marks a device
// offline only while the row names it (a device that moved on to another
// node stays online however late the first node's disconnect comes), and
// a node starting marks only its own devices offline.

// SetNode names this node on a shared database (cluster.node; "" by
// default) and marks the devices it had online offline: it is starting.
// Call it right after OpenRegistry. No effect on SQLite.
func (r *Registry) SetNode(ctx context.Context, name string) error {
	r.presMu.Lock()
	r.node = name
	r.presMu.Unlock()
	if !r.shared() {
		return nil
	}
	return r.markOffline(ctx)
}

// markOffline marks the devices of this node offline (on SQLite, all).
func (r *Registry) markOffline(ctx context.Context) error {
	q, args := `UPDATE devices SET online = 0 WHERE online != 0`, []any{}
	if r.shared() {
		r.presMu.Lock()
		node := r.node
		r.presMu.Unlock()
		q, args = q+` AND node = ?`, []any{node}
	}
	if _, err := r.db.W.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("mark devices offline: %w", err)
	}
	return nil
}

func (r *Registry) flushPresence(batch map[string]Presence, order []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	onSQL := `UPDATE devices SET online = 1, last_seen = ?, transport = ?,
		remote_addr = ?, protocol_version = ? WHERE id = ?`
	offSQL := `UPDATE devices SET online = 0, last_seen = ? WHERE id = ?`
	var node []any // the extra argument on PostgreSQL
	if r.shared() {
		onSQL = `UPDATE devices SET online = 1, last_seen = ?, transport = ?,
		remote_addr = ?, protocol_version = ?, node = ? WHERE id = ?`
		offSQL = `UPDATE devices SET online = 0, last_seen = ? WHERE id = ? AND node = ?`
		r.presMu.Lock()
		node = []any{r.node}
		r.presMu.Unlock()
		// In id order, as UpdateLastValues: no lock cycles between nodes.
		order = slices.Clone(order)
		slices.Sort(order)
	}
	on, err := tx.PrepareContext(ctx, onSQL)
	if err != nil {
		return err
	}
	defer on.Close()
	off, err := tx.PrepareContext(ctx, offSQL)
	if err != nil {
		return err
	}
	defer off.Close()
	for _, id := range order {
		p := batch[id]
		at := p.At
		if at.IsZero() {
			at = time.Now()
		}
		if p.Online {
			args := append([]any{fmtTime(at), p.Transport, p.RemoteAddr, p.ProtocolVersion}, node...)
			_, err = on.ExecContext(ctx, append(args, id)...)
		} else {
			_, err = off.ExecContext(ctx, append([]any{fmtTime(at), id}, node...)...)
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}
