package broker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The engine reads the store once, at start-up, through the Stored*
// methods, in this order: clients, subscriptions, inflight, retained,
// $SYS. Before the first of them, prepare removes what has expired while
// the broker was down and turns the fan-out records a crash left behind
// into inflight rows.

// prepare runs once, before the engine reads the store.
func (s *Storage) prepare() error {
	s.prepared.Do(func() {
		if s.srv.Load() == nil {
			s.prepErr = errors.New("session store: Attach was not called before the broker started")
			return
		}
		s.prepErr = s.prepareTx(context.Background(), time.Now().Unix())
	})
	return s.prepErr
}

func (s *Storage) prepareTx(ctx context.Context, now int64) error {
	tx, err := s.db.W.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("session store: prepare: %w", err)
	}
	defer tx.Rollback()
	for _, q := range []string{
		// Sessions past their expiry, and all they held.
		`CREATE TEMP TABLE IF NOT EXISTS expired_clients AS SELECT id FROM mqtt_clients WHERE 0`,
		`DELETE FROM expired_clients`,
		`INSERT INTO expired_clients SELECT id FROM mqtt_clients WHERE disconnected_at > 0 AND disconnected_at + expiry < ?1`,
		`DELETE FROM mqtt_subscriptions WHERE client_id IN (SELECT id FROM expired_clients)`,
		`DELETE FROM mqtt_inflight WHERE client_id IN (SELECT id FROM expired_clients)`,
		`DELETE FROM mqtt_clients WHERE id IN (SELECT id FROM expired_clients)`,
		// Rows of sessions the store does not have (written after their
		// session was removed).
		`DELETE FROM mqtt_subscriptions WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		`DELETE FROM mqtt_inflight WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		`DELETE FROM mqtt_pending WHERE client_id NOT IN (SELECT id FROM mqtt_clients)`,
		// Messages past their expiry.
		`DELETE FROM mqtt_inflight WHERE expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_retained WHERE expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_messages WHERE expires_at > 0 AND expires_at < ?1`,
	} {
		var args []any
		if strings.Contains(q, "?1") {
			args = append(args, now)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("session store: prepare: %w", err)
		}
	}
	n, err := convertPending(ctx, tx)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("session store: prepare: commit: %w", err)
	}
	if n > 0 {
		s.log.Info("session store: restored messages acknowledged before a crash but not yet queued", "messages", n)
	}
	return nil
}

// convertPending turns each fan-out record into an inflight row of its
// session, with a packet id that session does not use yet.
func convertPending(ctx context.Context, tx *sql.Tx) (int, error) {
	used := map[string]map[uint16]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT client_id, packet_id FROM mqtt_inflight
		WHERE client_id IN (SELECT DISTINCT client_id FROM mqtt_pending)`)
	if err != nil {
		return 0, fmt.Errorf("session store: prepare: %w", err)
	}
	for rows.Next() {
		var c string
		var id int
		if err := rows.Scan(&c, &id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("session store: prepare: %w", err)
		}
		if used[c] == nil {
			used[c] = map[uint16]bool{}
		}
		used[c][uint16(id)] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("session store: prepare: %w", err)
	}

	type pending struct {
		client        string
		qos, retain   int
		ids           string
		data, payload []byte
		expires       int64
	}
	var list []pending
	rows, err = tx.QueryContext(ctx, `SELECT p.client_id, p.qos, p.retain, p.sub_ids, m.data, m.payload, m.expires_at
		FROM mqtt_pending p JOIN mqtt_messages m ON m.seq = p.seq ORDER BY p.seq, p.client_id`)
	if err != nil {
		return 0, fmt.Errorf("session store: prepare: %w", err)
	}
	for rows.Next() {
		var p pending
		if err := rows.Scan(&p.client, &p.qos, &p.retain, &p.ids, &p.data, &p.payload, &p.expires); err != nil {
			rows.Close()
			return 0, fmt.Errorf("session store: prepare: %w", err)
		}
		list = append(list, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("session store: prepare: %w", err)
	}

	next := map[string]uint16{}
	for _, p := range list {
		m, err := decodeMessage(p.data, p.payload)
		if err != nil {
			continue // unreadable: nothing to deliver
		}
		id, ok := freePacketID(used, next, p.client)
		if !ok {
			continue // 65,535 messages in flight already
		}
		m.T, m.Client, m.PacketID = storage.InflightKey, p.client, id
		m.FixedHeader.Qos, m.FixedHeader.Retain, m.FixedHeader.Dup = byte(p.qos), p.retain == 1, false
		m.Properties.SubscriptionIdentifier = parseIDs(p.ids)
		data, _ := json.Marshal(storage.Message{
			T: m.T, Client: m.Client, Origin: m.Origin, PacketID: m.PacketID, FixedHeader: m.FixedHeader,
			TopicName: m.TopicName, Created: m.Created, Properties: m.Properties,
		})
		if _, err := tx.ExecContext(ctx, storeSQL[opInflightPut][0], p.client, int(id), data, p.payload, p.expires); err != nil {
			return 0, fmt.Errorf("session store: prepare: %w", err)
		}
	}
	for _, q := range []string{`DELETE FROM mqtt_pending`, `DELETE FROM mqtt_messages`} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return 0, fmt.Errorf("session store: prepare: %w", err)
		}
	}
	return len(list), nil
}

func freePacketID(used map[string]map[uint16]bool, next map[string]uint16, client string) (uint16, bool) {
	if used[client] == nil {
		used[client] = map[uint16]bool{}
	}
	for i := 0; i < 65535; i++ {
		next[client]++
		if next[client] == 0 {
			next[client] = 1
		}
		if id := next[client]; !used[client][id] {
			used[client][id] = true
			return id, true
		}
	}
	return 0, false
}

// query runs q and hands each row's columns to scan.
func (s *Storage) query(q string, scan func(*sql.Rows) error) error {
	if err := s.prepare(); err != nil {
		return err
	}
	rows, err := s.db.W.Query(q)
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
func (s *Storage) StoredClients() (v []storage.Client, err error) {
	err = s.query(`SELECT data FROM mqtt_clients`, func(r *sql.Rows) error {
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

// StoredSubscriptions implements mqtt.Hook.
func (s *Storage) StoredSubscriptions() (v []storage.Subscription, err error) {
	err = s.query(`SELECT data FROM mqtt_subscriptions`, func(r *sql.Rows) error {
		var b []byte
		var sub storage.Subscription
		if err := r.Scan(&b); err != nil {
			return err
		}
		if err := json.Unmarshal(b, &sub); err != nil {
			s.log.Warn("session store: unreadable subscription skipped", "error", err)
			return nil
		}
		v = append(v, sub)
		s.persist.add(sub.Client, packets.Subscription{Filter: sub.Filter})
		return nil
	})
	return v, err
}

func (s *Storage) storedMessages(q string) (v []storage.Message, err error) {
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
func (s *Storage) StoredInflightMessages() ([]storage.Message, error) {
	return s.storedMessages(`SELECT data, payload FROM mqtt_inflight ORDER BY client_id, packet_id`)
}

// StoredRetainedMessages implements mqtt.Hook.
func (s *Storage) StoredRetainedMessages() ([]storage.Message, error) {
	return s.storedMessages(`SELECT data, payload FROM mqtt_retained`)
}

// StoredSysInfo implements mqtt.Hook.
func (s *Storage) StoredSysInfo() (v storage.SystemInfo, err error) {
	err = s.query(`SELECT data FROM mqtt_sysinfo`, func(r *sql.Rows) error {
		var b []byte
		if err := r.Scan(&b); err != nil {
			return err
		}
		return v.UnmarshalBinary(b)
	})
	return v, err
}

// snapshot is the engine's persistent state as ops, for a resync.
func (s *Storage) snapshot() []op {
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

var _ mqtt.Hook = (*Storage)(nil)
