package sessions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/database"
)

// In a cluster whose nodes share PostgreSQL, the nodes share one session
// store: the tables of schema.go (pgSchema), each session row naming the
// node that holds it. A node loads only its own sessions at start. A
// persistent session follows its client: when the client connects to
// another node, that node takes the session over in the database (one
// conditional UPDATE: one winner) and loads it, its subscriptions,
// unacknowledged messages and queue into its engine (Adopt), after the
// node that held it, if it is alive, has let it go (Release). A node
// that was killed cannot let go: its sessions stay in the database as
// they were at its last commit, and the client's next connection, on
// any node, takes its session from there.

// Adopt's refusals.
var (
	ErrNotOwner = errors.New("session store: the session belongs to another identity")
	ErrMoved    = errors.New("session store: another node took the session meanwhile")
)

// OpenShared returns a store on db, a PostgreSQL database that the
// cluster's nodes share, for the node named node (non-empty). Its Close
// leaves db open.
func OpenShared(db *devices.DB, node string, opts *Options) (*Store, error) {
	if db.Dialect != database.Postgres || node == "" {
		return nil, errors.New("session store: a shared store needs PostgreSQL and a node name")
	}
	s := newStore(db, node, opts)
	if err := db.Migrate(context.Background(), component, devices.Schema{Postgres: pgSchema}); err != nil {
		return nil, fmt.Errorf("session store: %w", err)
	}
	return s, nil
}

// mine restricts q (a SELECT on one table, without WHERE) to this node's
// rows on a shared store: col is the table's node column ("node"), or its
// column of session ids.
func (s *Store) mine(q, col string) string {
	switch {
	case s.node == "":
		return q
	case col == "node" || col == "id":
		return q + ` WHERE node = ` + quote(s.node)
	default:
		return q + ` WHERE ` + col + ` IN (SELECT id FROM mqtt_clients WHERE node = ` + quote(s.node) + `)`
	}
}

// Release lets another node have session clientID (its client connects
// there): this node's engine forgets it (without a trace in the
// database) after its connection, if any, has been closed, and what this
// node had queued for the database is committed first. No-op unless the
// store is shared.
func (s *Store) Release(clientID string) {
	srv := s.srv.Load()
	if s.node == "" || srv == nil {
		return
	}
	cl, ok := srv.Clients.Get(clientID)
	if !ok || cl.Net.Inline {
		return
	}
	for filter := range cl.State.Subscriptions.GetAll() {
		if srv.Topics.Unsubscribe(filter, clientID) {
			atomic.AddInt64(&srv.Info.Subscriptions, -1)
		}
		s.persist.remove(clientID, filter)
	}
	srv.Clients.Delete(clientID)
	s.dropQueue(clientID)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-s.Barrier():
	case <-t.C:
		s.log.Warn("session store: handing a session to another node before its last changes were written", "client", clientID)
	}
	s.log.Info("session store: session handed to another node", "client", clientID)
}

// Adopt takes session clientID from the node that holds it in the
// database, if another one does, for a client connecting here as
// anonymous or name (device: a device's identity): it checks the
// session's owner as the access hook does, takes the row (one winner),
// and loads the session into the engine, where the connection inherits
// it (session present). It returns an error when the connection must be
// refused: ErrNotOwner when the session is another identity's,
// ErrMoved when another node took it meanwhile (ask the others again,
// then Adopt again), another error when the database cannot tell. Call
// it after the other nodes have been asked for the client id (cluster
// Claim), so that a live holder has released it. Nil at once unless the
// store is shared.
func (s *Store) Adopt(clientID string, anonymous bool, name string, device bool) error {
	srv := s.srv.Load()
	if s.node == "" || srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var node string
	var data []byte
	var expiry, disconnected int64
	err := s.db.W.QueryRowContext(ctx, `SELECT node, data, expiry, disconnected_at FROM mqtt_clients WHERE id = ?`, clientID).
		Scan(&node, &data, &expiry, &disconnected)
	if ex, ok := srv.Clients.Get(clientID); ok {
		if err != nil || node == s.node || ex.Net.Inline {
			return nil // this node's: the access hook's rules apply
		}
		// Another node took it while this one was cut off from the
		// others (it thought this node gone): this copy is stale.
		s.log.Warn("session store: another node took this node's session; dropping the copy here", "client", clientID, "node", node)
		if !ex.Closed() {
			ex.Stop(packets.ErrSessionTakenOver)
		}
		s.Release(clientID)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		s.log.Error("session store: cannot read a session from the database", "client", clientID, "error", err)
		return err
	}
	var c storage.Client
	if err := json.Unmarshal(data, &c); err != nil {
		s.log.Warn("session store: unreadable session removed", "client", clientID, "error", err)
		return s.purgeRows(ctx, clientID)
	}
	if stored := string(c.Username); !(anonymous && stored == "" || !anonymous && stored != "" && stored == name) {
		if device && !anonymous && name == clientID {
			// A device's client id is its id: another identity's session
			// under it goes (as on one node, auth_owner.go).
			s.log.Info("session store: removed another identity's session under a device's id", "client", clientID)
			return s.purgeRows(ctx, clientID)
		}
		s.log.Info("session store: refused another identity's session held by another node", "client", clientID, "node", node)
		return ErrNotOwner
	}
	if disconnected > 0 && disconnected+expiry < time.Now().Unix() {
		return s.purgeRows(ctx, clientID) // expired
	}
	res, err := s.db.W.ExecContext(ctx, `UPDATE mqtt_clients SET node = ? WHERE id = ? AND node = ?`, s.node, clientID, node)
	if err != nil {
		s.log.Error("session store: cannot take a session over", "client", clientID, "error", err)
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return ErrMoved
	}
	if _, err := s.load(ctx, srv, c); err != nil {
		s.log.Error("session store: cannot load a session taken from another node", "client", clientID, "error", err)
		return err
	}
	s.log.Info("session store: session taken from another node", "client", clientID, "from", node)
	return nil
}

// purgeRows deletes session id's rows, whichever node holds it.
func (s *Store) purgeRows(ctx context.Context, id string) error {
	err := func() error {
		tx, err := s.db.W.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, q := range storeSQL[opClientDelete] {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		return tx.Commit()
	}()
	if err != nil {
		s.log.Error("session store: cannot remove a session", "client", id, "error", err)
	}
	return err
}

// load puts session c, with its subscriptions, unacknowledged messages
// and queue read from the database, into the engine, as the engine
// restores its sessions at start (its loadClients, loadSubscriptions,
// loadInflight; loadQueues).
func (s *Store) load(ctx context.Context, srv *mqtt.Server, c storage.Client) (*mqtt.Client, error) {
	var subs []packets.Subscription
	var deep []op // filters deeper than mqtt.max_topic_levels (load.go)
	rows, err := s.db.W.QueryContext(ctx, `SELECT data FROM mqtt_subscriptions WHERE client_id = ?`, c.ID)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var b []byte
		var sub storage.Subscription
		if err := rows.Scan(&b); err != nil {
			rows.Close()
			return nil, err
		}
		if json.Unmarshal(b, &sub) != nil {
			continue
		}
		if s.deepFilter(sub.Filter) {
			deep = append(deep, newOp(opSubDelete, c.ID, sub.Filter))
			continue
		}
		subs = append(subs, packets.Subscription{Filter: sub.Filter, RetainHandling: sub.RetainHandling, Qos: sub.Qos,
			RetainAsPublished: sub.RetainAsPublished, NoLocal: sub.NoLocal, Identifier: sub.Identifier})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.dropDeep(deepSubscription, deep)
	var inflight []storage.Message
	rows, err = s.db.W.QueryContext(ctx, `SELECT data, payload FROM mqtt_inflight WHERE client_id = ? ORDER BY packet_id`, c.ID)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var data, payload []byte
		if err := rows.Scan(&data, &payload); err != nil {
			rows.Close()
			return nil, err
		}
		if m, err := decodeMessage(data, payload); err == nil {
			inflight = append(inflight, m)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var count int
	var bytes, last sql.NullInt64
	if err := s.db.W.QueryRowContext(ctx, `SELECT COUNT(*), SUM(LENGTH(data) + COALESCE(LENGTH(payload), 0)), MAX(seq)
		FROM mqtt_queue WHERE client_id = ?`, c.ID).Scan(&count, &bytes, &last); err != nil {
		return nil, err
	}

	cl := srv.NewClient(nil, c.Listener, c.ID, false)
	cl.Properties.Username = c.Username
	cl.Properties.Clean = c.Clean
	cl.Properties.ProtocolVersion = c.ProtocolVersion
	cl.Properties.Props = packets.Properties{
		SessionExpiryInterval:     c.Properties.SessionExpiryInterval,
		SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag,
		AuthenticationMethod:      c.Properties.AuthenticationMethod,
		AuthenticationData:        c.Properties.AuthenticationData,
		RequestProblemInfoFlag:    c.Properties.RequestProblemInfoFlag,
		RequestProblemInfo:        c.Properties.RequestProblemInfo,
		RequestResponseInfo:       c.Properties.RequestResponseInfo,
		ReceiveMaximum:            c.Properties.ReceiveMaximum,
		TopicAliasMaximum:         c.Properties.TopicAliasMaximum,
		User:                      c.Properties.User,
		MaximumPacketSize:         c.Properties.MaximumPacketSize,
	}
	cl.Properties.Will = mqtt.Will(c.Will)
	cl.Stop(packets.ErrServerShuttingDown) // offline, as a session restored at start
	for _, m := range inflight {
		cl.State.Inflight.Set(m.ToPacket())
	}
	q := s.queueFor(c.ID)
	q.mu.Lock()
	s.total.Add(bytes.Int64 - q.bytes)
	q.count, q.bytes, q.next = count, bytes.Int64, max(q.next, last.Int64+1)
	q.mu.Unlock()
	for _, sub := range subs {
		if srv.Topics.Subscribe(c.ID, sub) {
			atomic.AddInt64(&srv.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, sub)
		s.persist.add(c.ID, sub)
	}
	srv.Clients.Add(cl)
	return cl, nil
}

// AdoptOrphans takes the sessions that node (another node, gone: it
// left, or its beats stopped) held, so that their subscriptions keep
// being served from here and their queues keep filling while their
// clients are away. Each session goes to one node: the first whose
// conditional UPDATE takes its row. It returns the owners (user names)
// of the sessions it took, whose identities the caller may have to read
// again (another node may have created them). No-op unless the store is
// shared.
func (s *Store) AdoptOrphans(node string) (owners []string) {
	srv := s.srv.Load()
	if s.node == "" || srv == nil || node == s.node {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := s.db.W.QueryContext(ctx, `UPDATE mqtt_clients SET node = ? WHERE node = ? RETURNING id, data, expiry, disconnected_at`,
		s.node, node)
	if err != nil {
		s.log.Error("session store: cannot take the sessions of a node that is gone", "peer", node, "error", err)
		return nil
	}
	type orphan struct {
		c                    storage.Client
		expiry, disconnected int64
	}
	var list []orphan
	for rows.Next() {
		var id string
		var data []byte
		var o orphan
		if err := rows.Scan(&id, &data, &o.expiry, &o.disconnected); err != nil {
			s.log.Error("session store: cannot read a session taken from a node that is gone", "peer", node, "error", err)
			continue
		}
		if err := json.Unmarshal(data, &o.c); err != nil || o.c.ID != id {
			s.log.Warn("session store: unreadable session removed", "client", id)
			s.purgeRows(ctx, id)
			continue
		}
		list = append(list, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		s.log.Error("session store: cannot read the sessions taken from a node that is gone", "peer", node, "error", err)
	}
	now := time.Now().Unix()
	n := 0
	for _, o := range list {
		id := o.c.ID
		if _, ok := srv.Clients.Get(id); ok {
			continue // connecting here right now: Adopt has it
		}
		if o.disconnected == 0 {
			// Connected there when it went: offline from now on, as the
			// engine records a session restored at start.
			o.disconnected = now
		}
		if o.disconnected+o.expiry < now {
			s.purgeRows(ctx, id)
			continue
		}
		cl, err := s.load(ctx, srv, o.c)
		if err != nil {
			s.log.Error("session store: cannot load a session taken from a node that is gone", "client", id, "error", err)
			continue
		}
		s.w.enqueue(newOp(opClientPut, id, encodeClient(cl), o.expiry, o.disconnected))
		if len(o.c.Username) > 0 {
			owners = append(owners, string(o.c.Username))
		}
		n++
	}
	if n > 0 {
		s.log.Info("session store: took the sessions of a node that is gone", "peer", node, "sessions", n)
	}
	return owners
}

// Persistent reports whether cl's session outlives its connection: its
// QoS 1/2 messages go through its queue on disk.
func (s *Store) Persistent(cl *mqtt.Client) bool { return persistent(cl) }

// Barrier returns a channel closed once everything the store has been
// given so far is committed, or has failed: a node that receives a
// message for its persistent sessions from another node answers after it
// (cluster: Durability).
func (s *Store) Barrier() <-chan struct{} {
	// A harmless op: its batch commits after everything queued before.
	if b := s.w.enqueue(newOp(opQueueDelete, "", int64(-1))); b != nil {
		return b.done
	}
	c := make(chan struct{})
	close(c)
	return c
}
