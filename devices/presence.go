package devices

import (
	"context"
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

func (r *Registry) flushPresence(batch map[string]Presence, order []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	on, err := tx.PrepareContext(ctx, `UPDATE devices SET online = 1, last_seen = ?, transport = ?,
		remote_addr = ?, protocol_version = ? WHERE id = ?`)
	if err != nil {
		return err
	}
	defer on.Close()
	off, err := tx.PrepareContext(ctx, `UPDATE devices SET online = 0, last_seen = ? WHERE id = ?`)
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
			_, err = on.ExecContext(ctx, fmtTime(at), p.Transport, p.RemoteAddr, p.ProtocolVersion, id)
		} else {
			_, err = off.ExecContext(ctx, fmtTime(at), id)
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}
