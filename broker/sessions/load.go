package sessions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices/topic"
)

// The engine reads the store once, at start-up, through the Stored*
// methods, in this order: clients, subscriptions, inflight, retained,
// $SYS. Before the first of them, prepare removes what has expired while
// the broker was down and reads the queues' counts.

// prepare runs once, before the engine reads the store.
func (s *Store) prepare() error {
	s.prepared.Do(func() {
		if s.srv.Load() == nil {
			s.prepErr = errors.New("session store: Attach was not called before the broker started")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if s.prepErr = s.prepareTx(ctx, time.Now().Unix()); s.prepErr == nil {
			s.prepErr = s.loadQueues(ctx)
		}
	})
	return s.prepErr
}

func (s *Store) prepareTx(ctx context.Context, now int64) error {
	tx, err := s.db.W.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("session store: prepare: %w", err)
	}
	defer tx.Rollback()
	steps := []string{
		// Sessions past their expiry, and all they held.
		`CREATE TEMP TABLE IF NOT EXISTS expired_clients AS SELECT id FROM mqtt_clients WHERE 0`,
		`DELETE FROM expired_clients`,
		`INSERT INTO expired_clients SELECT id FROM mqtt_clients WHERE disconnected_at > 0 AND disconnected_at + expiry < ?1`,
		`DELETE FROM mqtt_subscriptions WHERE client_id IN (SELECT id FROM expired_clients)`,
		`DELETE FROM mqtt_inflight WHERE client_id IN (SELECT id FROM expired_clients)`,
		`DELETE FROM mqtt_queue WHERE client_id IN (SELECT id FROM expired_clients)`,
		`DELETE FROM mqtt_clients WHERE id IN (SELECT id FROM expired_clients)`,
		// Rows of sessions the store does not have (written after their
		// session was removed).
		`DELETE FROM mqtt_subscriptions WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		`DELETE FROM mqtt_inflight WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		`DELETE FROM mqtt_queue WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		// Messages past their expiry.
		`DELETE FROM mqtt_inflight WHERE expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_retained WHERE expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_queue WHERE expires_at > 0 AND expires_at < ?1`,
	}
	if s.node != "" {
		steps = pgPrepare(s.node)
	}
	for _, q := range steps {
		var args []any
		if strings.Contains(q, "?1") {
			args = append(args, now)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("session store: prepare: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("session store: prepare: commit: %w", err)
	}
	return nil
}

// importLegacy moves the sessions an older Tether kept in tether.db
// (component "mqtt_store") into this file, once: the copy and the mark
// that it was done commit together here, and the old rows are deleted
// after. Fan-out records a crash left there become queued messages.
func (s *Store) importLegacy(ctx context.Context, path string) error {
	var done int
	if err := s.db.W.QueryRowContext(ctx, `SELECT COUNT(*) FROM legacy_import`).Scan(&done); err != nil {
		return fmt.Errorf("session store: import: %w", err)
	}
	if done > 0 {
		return nil
	}
	mark := func() error {
		_, err := s.db.W.ExecContext(ctx, `INSERT OR IGNORE INTO legacy_import(id, done) VALUES (1, datetime('now'))`)
		return err
	}
	if _, err := os.Stat(path); err != nil {
		return mark()
	}
	conn, err := s.db.W.Conn(ctx)
	if err != nil {
		return fmt.Errorf("session store: import: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `ATTACH DATABASE ? AS legacy`, path); err != nil {
		return fmt.Errorf("session store: import from %s: %w", path, err)
	}
	defer conn.ExecContext(context.Background(), `DETACH DATABASE legacy`)
	var tables int
	if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM legacy.sqlite_master WHERE type = 'table' AND name IN
		('mqtt_clients', 'mqtt_subscriptions', 'mqtt_inflight', 'mqtt_retained', 'mqtt_messages', 'mqtt_pending', 'mqtt_sysinfo')`).Scan(&tables); err != nil {
		return fmt.Errorf("session store: import from %s: %w", path, err)
	}
	if tables < 7 {
		_, err := conn.ExecContext(ctx, `INSERT OR IGNORE INTO legacy_import(id, done) VALUES (1, datetime('now'))`)
		return err
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("session store: import: %w", err)
	}
	defer tx.Rollback()
	var n int64
	for _, q := range []string{
		`INSERT OR REPLACE INTO mqtt_clients SELECT id, data, expiry, disconnected_at FROM legacy.mqtt_clients`,
		`INSERT OR REPLACE INTO mqtt_subscriptions SELECT client_id, filter, data FROM legacy.mqtt_subscriptions`,
		`INSERT OR REPLACE INTO mqtt_inflight SELECT client_id, packet_id, data, payload, expires_at FROM legacy.mqtt_inflight`,
		`INSERT OR REPLACE INTO mqtt_retained SELECT topic, data, payload, expires_at FROM legacy.mqtt_retained`,
		`INSERT OR REPLACE INTO mqtt_sysinfo SELECT id, data FROM legacy.mqtt_sysinfo`,
		`INSERT OR REPLACE INTO mqtt_queue(client_id, seq, qos, retain, sub_ids, data, payload, expires_at)
			SELECT p.client_id, p.seq, p.qos, p.retain, p.sub_ids, m.data, m.payload, m.expires_at
			FROM legacy.mqtt_pending p JOIN legacy.mqtt_messages m ON m.seq = p.seq`,
		`INSERT INTO legacy_import(id, done) VALUES (1, datetime('now'))`,
	} {
		res, err := tx.ExecContext(ctx, q)
		if err != nil {
			return fmt.Errorf("session store: import from %s: %w", path, err)
		}
		k, _ := res.RowsAffected()
		n += k
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("session store: import from %s: %w", path, err)
	}
	// The copy is safe here; clearing the old rows is housekeeping.
	for _, t := range []string{"mqtt_clients", "mqtt_subscriptions", "mqtt_inflight", "mqtt_retained", "mqtt_messages", "mqtt_pending", "mqtt_sysinfo"} {
		if _, err := conn.ExecContext(ctx, `DELETE FROM legacy.`+t); err != nil {
			s.log.Warn("session store: imported sessions, but could not clear the old rows", "file", path, "error", err)
			break
		}
	}
	if n > 1 {
		s.log.Info("session store: moved sessions from the main database to their own file", "from", path, "to", s.db.Path, "rows", n-1)
	}
	return nil
}

// query runs q and hands each row's columns to scan.
func (s *Store) query(q string, scan func(*sql.Rows) error) error {
	if err := s.prepare(); err != nil {
		return err
	}
	rows, err := s.db.W.Query(q) // before the writer starts
	if err != nil {
		return fmt.Errorf("session store: load: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("session store: load: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("session store: load: %w", err)
	}
	return nil
}

// StoredClients implements mqtt.Hook.
func (s *Store) StoredClients() (v []storage.Client, err error) {
	err = s.query(s.mine(`SELECT data FROM mqtt_clients`, "id"), func(r *sql.Rows) error {
		var b []byte
		var c storage.Client
		if err := r.Scan(&b); err != nil {
			return err
		}
		if err := json.Unmarshal(b, &c); err != nil {
			s.log.Warn("session store: unreadable client skipped", "error", err)
			return nil
		}
		v = append(v, c)
		return nil
	})
	return v, err
}

// StoredSubscriptions implements mqtt.Hook. A subscription whose filter
// has more levels than mqtt.max_topic_levels (deep) is not loaded, and is
// deleted from the store.
func (s *Store) StoredSubscriptions() (v []storage.Subscription, err error) {
	var deep []op
	err = s.query(s.mine(`SELECT data FROM mqtt_subscriptions`, "client_id"), func(r *sql.Rows) error {
		var b []byte
		var sub storage.Subscription
		if err := r.Scan(&b); err != nil {
			return err
		}
		if err := json.Unmarshal(b, &sub); err != nil {
			s.log.Warn("session store: unreadable subscription skipped", "error", err)
			return nil
		}
		if s.deepFilter(sub.Filter) {
			deep = append(deep, newOp(opSubDelete, sub.Client, sub.Filter))
			return nil
		}
		v = append(v, sub)
		s.persist.add(sub.Client, packets.Subscription{Filter: sub.Filter})
		return nil
	})
	s.dropDeep(deepSubscription, deep)
	return v, err
}

// The topic levels' bound (mqtt.max_topic_levels) came after some records
// were stored, or was lowered since: the engine would load a subscription
// or a retained message with more levels, whose nodes of its topic index
// nothing bounds, and a deep retained message could not even be cleared
// over MQTT, as a PUBLISH to its topic is refused. Such records are not
// loaded, and are deleted from the store (through the writer, like any
// change: a resync writes what the engine holds, without them), counted
// in tether_store_deep_removed_total{what} and logged, how many, never a
// topic or payload.

// What a deep record is (tether_store_deep_removed_total{what}).
const (
	deepSubscription = "subscription"
	deepRetained     = "retained"
)

// deepFilter reports whether a stored subscription's filter has more
// levels than mqtt.max_topic_levels (a shared subscription's counted as
// its filter, as the broker does).
func (s *Store) deepFilter(filter string) bool {
	return topic.TooDeep(topic.Unshare(filter), s.opts.MaxTopicLevels)
}

// dropDeep deletes the deep records found at load (ops), counts and logs
// them.
func (s *Store) dropDeep(what string, ops []op) {
	if len(ops) == 0 {
		return
	}
	s.w.enqueue(ops...)
	s.metrics.deep.WithLabelValues(what).Add(float64(len(ops)))
	s.log.Warn("session store: removed stored records with more levels than mqtt.max_topic_levels (stored before the bound, or under a higher one)",
		"what", what, "count", len(ops), "limit", s.opts.MaxTopicLevels)
}

func (s *Store) storedMessages(q string) (v []storage.Message, err error) {
	err = s.query(q, func(r *sql.Rows) error {
		var data, payload []byte
		if err := r.Scan(&data, &payload); err != nil {
			return err
		}
		m, err := decodeMessage(data, payload)
		if err != nil {
			s.log.Warn("session store: unreadable message skipped", "error", err)
			return nil
		}
		v = append(v, m)
		return nil
	})
	return v, err
}

// StoredInflightMessages implements mqtt.Hook.
func (s *Store) StoredInflightMessages() ([]storage.Message, error) {
	return s.storedMessages(s.mine(`SELECT data, payload FROM mqtt_inflight`, "client_id") + ` ORDER BY client_id, packet_id`)
}

// StoredRetainedMessages implements mqtt.Hook. A retained message whose
// topic has more levels than mqtt.max_topic_levels is not loaded, and is
// deleted from the store.
func (s *Store) StoredRetainedMessages() ([]storage.Message, error) {
	all, err := s.storedMessages(s.mine(`SELECT data, payload FROM mqtt_retained`, "node"))
	var deep []op
	v := all[:0]
	for _, m := range all {
		if topic.TooDeep(m.TopicName, s.opts.MaxTopicLevels) {
			deep = append(deep, newOp(opRetainedDelete, m.TopicName))
			continue
		}
		v = append(v, m)
	}
	s.dropDeep(deepRetained, deep)
	return v, err
}

// StoredSysInfo implements mqtt.Hook.
func (s *Store) StoredSysInfo() (v storage.SystemInfo, err error) {
	err = s.query(s.mine(`SELECT data FROM mqtt_sysinfo`, "node"), func(r *sql.Rows) error {
		var b []byte
		if err := r.Scan(&b); err != nil {
			return err
		}
		return v.UnmarshalBinary(b)
	})
	return v, err
}

// snapshot is the engine's persistent state as ops, for a resync.
func (s *Store) snapshot() []op {
	srv := s.srv.Load()
	if srv == nil {
		return nil
	}
	var ops []op
	for _, cl := range srv.Clients.GetAll() {
		if !persistent(cl) || takenOver(cl) {
			continue
		}
		ops = append(ops, newOp(opClientPut, cl.ID, encodeClient(cl), sessionExpiry(cl, s.Opts.Capabilities), cl.StopTime()))
		for _, sub := range cl.State.Subscriptions.GetAll() {
			ops = append(ops, newOp(opSubPut, cl.ID, sub.Filter, encodeSubscription(cl.ID, sub, sub.Qos)))
		}
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if t := pk.FixedHeader.Type; t != packets.Publish && t != packets.Pubrec && t != packets.Pubrel {
				continue
			}
			data, payload := encodeMessage(cl.ID, storage.InflightKey, pk)
			ops = append(ops, newOp(opInflightPut, cl.ID, int(pk.PacketID), data, payload, max(pk.Expiry, 0)))
		}
	}
	for _, pk := range srv.Topics.Retained.GetAll() {
		ops = append(ops, retainedOp(pk))
	}
	return ops
}

var _ mqtt.Hook = (*Store)(nil)
