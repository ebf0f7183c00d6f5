package sessions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/listeners"
)

// Store is the engine's session store on SQLite, in a file of its own
// (sessions.db in the data directory) with its own writer, so that a QoS 1
// publisher's acknowledgement waits for its own group commit and never
// behind another store's batch. Persistent sessions with their
// subscriptions, their unacknowledged QoS 1/2 messages, their offline
// queues and retained messages survive a restart and a kill -9. Sessions
// that end with their connection (clean session, or Session Expiry
// Interval 0) are not written.
//
// Group commit: hooks never write to SQLite themselves; they queue changes
// for one writer goroutine, which commits everything queued since its last
// transaction in the next one. A QoS 1/2 PUBLISH is the one place where a
// client waits: the engine writes PUBACK/PUBREC before it hands the message
// to the subscribers' sessions, so OnPublish appends the message to the
// queue of each persistent session it goes to (and writes the retained
// copy) and blocks the publisher's goroutine until the batch holding them
// has committed. Many publishers share one transaction. A message that no
// persistent session subscribes to (and is not retained) costs one lookup
// in persistIndex, no write and no wait. If SQLite fails, routing goes on
// without waiting, Healthy reports the fault, and the writer retries with
// backoff.
//
// Offline queues (queue.go): the engine does not deliver a message to a
// persistent session the store has queued it for (Divert, through the
// broker's access hook); the store hands queued messages to the session's
// inflight window itself, in order, as acknowledgements free slots.
//
// Add Store as the last hook, so that it sees each PUBLISH as the other
// hooks left it, and call Attach before the broker starts.
type Store struct {
	mqtt.HookBase

	db      *devices.DB
	node    string // on a shared database (shared.go), this node's name; else ""
	log     *slog.Logger
	opts    Options
	metrics *storeMetrics
	w       *writer

	srv     atomic.Pointer[mqtt.Server]
	loading atomic.Bool // true until the engine has read the store
	pubs    sync.Map    // *mqtt.Client -> *pubState
	persist *persistIndex

	// routing holds, for each QoS 1/2 message between OnPublish and
	// OnPublished, the sessions it was queued for: keyed by its topic's
	// bytes (OnPublish gives each such message a topic string of its
	// own), which the engine's access check for a delivery sees.
	routing  sync.Map // *byte -> *route
	nRouting atomic.Int64
	queues   sync.Map // client id -> *queue
	total    atomic.Int64
	acl      atomic.Pointer[func(*mqtt.Client, string) bool]

	prepared sync.Once
	prepErr  error
	started  atomic.Bool // Init started the writer
	stopOnce sync.Once
}

// Options tune the store. The zero value means the defaults.
type Options struct {
	// Logger receives the store's log; nil means slog.Default().
	Logger *slog.Logger
	// CommitTimeout is the longest a publisher waits for its batch to
	// commit before its acknowledgement goes anyway (counted in
	// tether_store_acks_not_durable_total). 0 means 2 s.
	CommitTimeout time.Duration
	// TxTimeout bounds each of the writer's transactions. 0 means 10 s.
	TxTimeout time.Duration
	// MaxQueueBytes bounds the memory that changes waiting for SQLite may
	// hold while it fails. 0 means 64 MiB.
	MaxQueueBytes int
	// MaxQueuedMessages and MaxQueuedBytes bound each persistent
	// session's offline queue (mqtt.max_queued_messages,
	// mqtt.max_queued_bytes); MaxStoreBytes bounds all queues together
	// (mqtt.max_queue_store_bytes). 0 means the defaults: 100,000
	// messages, 64 MiB, 1 GiB.
	MaxQueuedMessages int
	MaxQueuedBytes    int64
	MaxStoreBytes     int64
	// Deliveries are hooks told (OnQosPublish) when the store hands a
	// queued message to a session, as the engine tells them of the
	// messages it hands out itself (the command tracker).
	Deliveries []mqtt.Hook
	// Refused, if set, is called when a message is refused for a session
	// because its queue is full.
	Refused func(clientID string, pk packets.Packet, reason string)
	// MaxTopicLevels is mqtt.max_topic_levels (0: no bound): the
	// subscriptions and retained messages stored with more levels are
	// not loaded, and are deleted (load.go).
	MaxTopicLevels int
	// Legacy is the path of a database that may hold sessions from before
	// the store had a file of its own (tether.db); they are moved here
	// once.
	Legacy string
}

// pubState follows one publisher's current PUBLISH from OnPublish to
// OnPublished. The engine calls both on the publisher's goroutine.
type pubState struct {
	route    *byte       // the message's routing key; nil if none
	retained atomic.Bool // OnPublish already wrote the retained copy
}

// FileName is the store's database inside the data directory.
const FileName = "sessions.db"

// Open opens (creating it, mode 0600, if needed) dir/sessions.db and
// returns a store on it. Add it to the broker with Options.Hooks, then
// call Attach with the broker's engine; Close it after the broker has
// stopped.
func Open(dir string, opts *Options) (*Store, error) {
	if err := os.MkdirAll(dir, devices.DirMode); err != nil {
		return nil, fmt.Errorf("session store: create data dir: %w", err)
	}
	// OpenDBFile makes the file and the ones beside it 0600.
	db, err := devices.OpenDBFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, fmt.Errorf("session store: %w", err)
	}
	s := newStore(db, "", opts)
	ctx := context.Background()
	if err := db.Migrate(ctx, component, devices.Schema{SQLite: schema}); err != nil {
		db.Close()
		return nil, fmt.Errorf("session store: %w", err)
	}
	if s.opts.Legacy != "" {
		if err := s.importLegacy(ctx, s.opts.Legacy); err != nil {
			db.Close()
			return nil, err
		}
	}
	return s, nil
}

func newStore(db *devices.DB, node string, opts *Options) *Store {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 2 * time.Second
	}
	if o.TxTimeout <= 0 {
		o.TxTimeout = 10 * time.Second
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = 64 << 20
	}
	if o.MaxQueuedMessages <= 0 {
		o.MaxQueuedMessages = 100_000
	}
	if o.MaxQueuedBytes <= 0 {
		o.MaxQueuedBytes = 64 << 20
	}
	if o.MaxStoreBytes <= 0 {
		o.MaxStoreBytes = 1 << 30
	}
	s := &Store{db: db, node: node, log: o.Logger.With("component", "store"), opts: o, metrics: newStoreMetrics(), persist: newPersistIndex()}
	s.w = newWriter(db.W, s.log, o.MaxQueueBytes, o.TxTimeout, s.metrics)
	if node != "" {
		s.w.sql = pgStoreSQL(node)
	}
	s.w.snapshot = s.snapshot
	s.metrics.queueBytes = s.w.queuedBytes
	s.metrics.healthy = s.Healthy
	s.metrics.store = s
	s.loading.Store(true)
	return s
}

// Close closes the store's database. Call it after the broker has
// stopped (Server.Close stops the store's writer).
func (s *Store) Close() error {
	_ = s.Stop()
	if s.node != "" {
		return nil // the shared database is its opener's (OpenShared)
	}
	return s.db.Close()
}

// Attach gives the store the engine it serves: it needs it to find a
// message's persistent recipients and to rebuild itself after a fault.
func (s *Store) Attach(srv *mqtt.Server) { s.srv.Store(srv) }

// Healthy returns why the store is not writing, or nil.
func (s *Store) Healthy() error { return s.w.healthy() }

// ID implements mqtt.Hook.
func (s *Store) ID() string { return "tether-storage" }

// Provides implements mqtt.Hook. The engine asks it for every event, so
// it is a switch, not a search.
func (s *Store) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnPublish,
		mqtt.OnPublished,
		mqtt.OnRetainMessage,
		mqtt.OnWillSent,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnSysInfoTick,
		mqtt.OnClientExpired,
		mqtt.OnRetainedExpired,
		mqtt.OnStarted,
		mqtt.StoredClients,
		mqtt.StoredInflightMessages,
		mqtt.StoredRetainedMessages,
		mqtt.StoredSubscriptions,
		mqtt.StoredSysInfo:
		return true
	}
	return false
}

// Init starts the writer.
func (s *Store) Init(config any) error {
	ctx := context.Background()
	if err := s.w.prepare(ctx); err != nil {
		return err
	}
	s.started.Store(true)
	go s.w.run()
	return nil
}

// Stop writes what is queued and stops the writer. The engine calls it
// from Server.Close, after every client has gone. Idempotent.
func (s *Store) Stop() error {
	s.stopOnce.Do(func() {
		if s.started.Load() {
			s.w.stop()
		}
		s.w.closeStmts()
	})
	return nil
}

// OnStarted marks the end of loading: from now on OnDisconnect is a real
// disconnection, not the engine restoring a stored session.
func (s *Store) OnStarted() { s.loading.Store(false) }

// OnConnect turns off server-to-client topic aliases for persistent
// sessions: an alias means nothing on the next connection, and a stored
// message must carry its topic. (The server may always choose not to use
// aliases [MQTT-3.3.2-12 ff.].)
func (s *Store) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if persistent(cl) {
		cl.Properties.Props.TopicAliasMaximum = 0
	}
	return nil
}

func (s *Store) putClient(cl *mqtt.Client, disconnectedAt int64) {
	s.w.enqueue(newOp(opClientPut, cl.ID, encodeClient(cl), sessionExpiry(cl, s.Opts.Capabilities), disconnectedAt))
}

// OnSessionEstablished records a persistent session, or forgets an earlier
// persistent session under the same client id; a persistent session that
// returns starts draining its queue.
func (s *Store) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if !persistent(cl) {
		s.dropQueue(cl.ID)
		s.w.enqueue(newOp(opClientDelete, cl.ID))
		return
	}
	if cl.Properties.Clean {
		// MQTT 5 Clean Start: the engine began a new session; so does
		// its queue.
		s.dropQueue(cl.ID)
		s.w.enqueue(newOp(opQueueClear, cl.ID))
	}
	s.persist.addAll(cl) // subscriptions it may have inherited
	s.putClient(cl, 0)
	s.online(cl)
}

func takenOver(cl *mqtt.Client) bool {
	return cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
}

// OnDisconnect records when a persistent session went offline, or removes
// a session that ends here. A session taken over by a new connection is
// the new connection's to write.
func (s *Store) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if v, ok := s.pubs.LoadAndDelete(cl); ok {
		s.forgetRoute(v.(*pubState))
	}
	if s.loading.Load() || cl.Net.Inline {
		return
	}
	s.offline(cl)
	if takenOver(cl) {
		return
	}
	if expire {
		s.dropQueue(cl.ID)
		s.w.enqueue(newOp(opClientDelete, cl.ID))
		return
	}
	if persistent(cl) {
		s.persist.addAll(cl) // MQTT 5 DISCONNECT may have made it persistent
		s.putClient(cl, time.Now().Unix())
	}
}

// OnWillSent records that a persistent session's will has gone.
func (s *Store) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !takenOver(cl) {
		s.putClient(cl, cl.StopTime())
	}
}

// OnClientExpired removes an expired session and all it held, its queue
// included.
func (s *Store) OnClientExpired(cl *mqtt.Client) {
	for filter := range cl.State.Subscriptions.GetAll() {
		s.persist.remove(cl.ID, filter)
	}
	s.dropQueue(cl.ID)
	s.w.enqueue(newOp(opClientDelete, cl.ID))
}

// OnSubscribed records a persistent session's granted subscriptions.
func (s *Store) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if !persistent(cl) {
		return
	}
	var ops []op
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		ops = append(ops, newOp(opSubPut, cl.ID, f.Filter, encodeSubscription(cl.ID, f, reasonCodes[i])))
		s.persist.add(cl.ID, f)
	}
	if len(ops) > 0 {
		s.w.enqueue(ops...)
	}
}

// OnUnsubscribed forgets a persistent session's subscriptions.
func (s *Store) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	// The engine has dropped these (from UNSUBSCRIBE, or clearing the
	// session), whatever the session is now.
	for _, f := range pk.Filters {
		s.persist.remove(cl.ID, f.Filter)
	}
	if !persistent(cl) {
		return
	}
	ops := make([]op, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		ops = append(ops, newOp(opSubDelete, cl.ID, f.Filter))
	}
	if len(ops) > 0 {
		s.w.enqueue(ops...)
	}
}

func (s *Store) pubState(cl *mqtt.Client) *pubState {
	if v, ok := s.pubs.Load(cl); ok {
		return v.(*pubState)
	}
	st := &pubState{}
	s.pubs.Store(cl, st)
	return st
}

// forgetRoute drops the routing record of st's message.
func (s *Store) forgetRoute(st *pubState) {
	if st.route != nil {
		if _, ok := s.routing.LoadAndDelete(st.route); ok {
			s.nRouting.Add(-1)
		}
		st.route = nil
	}
}

// SkipsQoS0 tells the broker's hook set (broker.hookSet) that OnPublish
// and OnPublished do nothing for a QoS 0 PUBLISH: it does not copy one
// into them.
func (s *Store) SkipsQoS0(event byte) bool {
	return event == mqtt.OnPublish || event == mqtt.OnPublished
}

// OnPublish makes a QoS 1/2 PUBLISH durable before the engine acknowledges
// it: the retained copy, and the message in the queue of each persistent
// session it goes to, are queued together and the publisher waits for
// their commit. QoS 0 and the broker's own messages do not wait (the
// broker's own are queued all the same).
func (s *Store) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	inline := cl.Net.Inline
	retain := !inline && pk.FixedHeader.Retain && s.Opts.Capabilities.RetainAvailable != 0
	srv := s.srv.Load()
	fanout := srv != nil && s.persist.matches(pk.TopicName)
	var st *pubState
	if !inline {
		if retain || fanout {
			st = s.pubState(cl)
		} else if v, ok := s.pubs.Load(cl); ok {
			st = v.(*pubState)
		}
		if st != nil {
			// The previous PUBLISH never reached OnPublished (its ack
			// could not be written), so the engine did not route it.
			s.forgetRoute(st)
		}
	}
	if !retain && !fanout {
		return pk, nil // the fast path: nothing to make durable
	}
	var last *batch
	wait := false
	if retain {
		last, wait = s.w.enqueue(retainedOp(pk)), true
		st.retained.Store(true)
	}
	if fanout {
		// A topic string of its own: its bytes identify this message
		// when the engine asks whether to deliver it (Divert).
		pk.TopicName = strings.Clone(pk.TopicName)
		r, b, queued := s.route(srv, cl, pk)
		if queued {
			last, wait = b, true // nil if the writer dropped it: counted in wait
		}
		if len(r.to) > 0 {
			key := unsafe.StringData(pk.TopicName)
			s.routing.Store(key, r)
			s.nRouting.Add(1)
			if st != nil {
				st.route = key
			} else {
				r.inline = true
			}
		}
	}
	if !inline && wait {
		listeners.FlushAcks(cl.Net.Conn) // the PUBACKs of the packets before
		s.wait(last)
	}
	return pk, nil
}

// route queues pk for each persistent session the engine's
// publishToSubscribers will give it to (mirroring its choice of QoS,
// retain flag and subscription identifiers), and returns them with the
// batch that commits the last of them. Shared subscriptions are left to
// the engine.
func (s *Store) route(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) (r *route, last *batch, queued bool) {
	caps := s.Opts.Capabilities
	lost := false
	r = &route{to: map[string]bool{}}
	data, payload := encodeMessage("", storage.InflightKey, pk)
	acl := s.acl.Load()
	for id, sub := range srv.Topics.Subscribers(pk.TopicName).Subscriptions {
		if sub.NoLocal && id == cl.ID {
			continue
		}
		to, ok := srv.Clients.Get(id)
		if !ok || !persistent(to) {
			continue
		}
		qos := min(pk.FixedHeader.Qos, sub.Qos, caps.MaximumQos)
		if qos == 0 {
			continue
		}
		if acl != nil && !(*acl)(to, pk.TopicName) {
			continue // the engine refuses it too
		}
		retain := pk.FixedHeader.Retain && to.Properties.ProtocolVersion == 5 && sub.RetainAsPublished
		var ids []int
		for _, n := range sub.Identifiers {
			ids = append(ids, n)
		}
		sort.Ints(ids)
		r.to[id] = true
		if b, ok := s.enqueueMessage(id, item{qos: qos, retain: retain, ids: ids, pk: pk}, data, payload); ok {
			last, queued = b, true
			lost = lost || b == nil
		}
	}
	if lost {
		last = nil // not all of them will be written
	}
	return r, last, queued
}

// Divert reports whether the engine must not deliver the message on topic
// to cl because the store has queued it (or refused it) for cl. The broker
// asks it in its access check for deliveries.
func (s *Store) Divert(cl *mqtt.Client, topic string) bool {
	if s.nRouting.Load() == 0 || topic == "" {
		return false
	}
	v, ok := s.routing.Load(unsafe.StringData(topic))
	return ok && v.(*route).to[cl.ID]
}

// AddDeliveries adds hooks to Options.Deliveries (the broker's count of
// in-flight bytes); call it before the broker starts.
func (s *Store) AddDeliveries(h ...mqtt.Hook) {
	s.opts.Deliveries = append(s.opts.Deliveries[:len(s.opts.Deliveries):len(s.opts.Deliveries)], h...)
}

// SetACL gives the store the broker's access check for deliveries: a
// message is queued only for a session that may read it, and checked
// again when it leaves the queue.
func (s *Store) SetACL(allow func(cl *mqtt.Client, topic string) bool) { s.acl.Store(&allow) }

// wait blocks until b has committed, the store fails, or CommitTimeout.
func (s *Store) wait(b *batch) {
	if b == nil || s.w.failing.Load() != nil {
		s.metrics.unsafeAcks.Inc()
		return
	}
	t := time.NewTimer(s.opts.CommitTimeout)
	defer t.Stop()
	select {
	case <-b.done:
		if b.err != nil {
			s.metrics.unsafeAcks.Inc()
		}
	case <-t.C:
		s.metrics.unsafeAcks.Inc()
	}
}

// OnPublished drops the message's routing record: the engine has routed
// it.
func (s *Store) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Qos == 0 {
		return
	}
	if cl.Net.Inline {
		if pk.TopicName != "" {
			if _, ok := s.routing.LoadAndDelete(unsafe.StringData(pk.TopicName)); ok {
				s.nRouting.Add(-1)
			}
		}
		return
	}
	if v, ok := s.pubs.Load(cl); ok {
		s.forgetRoute(v.(*pubState))
	}
}

func retainedOp(pk packets.Packet) op {
	if len(pk.Payload) == 0 {
		return newOp(opRetainedDelete, pk.TopicName)
	}
	data, payload := encodeMessage("", storage.RetainedKey, pk)
	return newOp(opRetainedPut, pk.TopicName, data, payload, max(pk.Expiry, 0))
}

// OnRetainMessage writes a retained message (or its removal) that
// OnPublish has not already written: QoS 0, wills, the broker's own.
func (s *Store) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if v, ok := s.pubs.Load(cl); ok && v.(*pubState).retained.CompareAndSwap(true, false) {
		return
	}
	s.w.enqueue(retainedOp(pk))
}

// PutRetained writes a retained message (or, with no payload, its
// removal) that reached the engine without its hooks: one copied from
// another node (cluster).
func (s *Store) PutRetained(pk packets.Packet) { s.w.enqueue(retainedOp(pk)) }

// OnRetainedExpired removes an expired retained message.
func (s *Store) OnRetainedExpired(topic string) {
	s.w.enqueue(newOp(opRetainedDelete, topic))
}

// OnQosPublish records a QoS 1/2 message queued for a persistent session,
// and the PUBREC state of a QoS 2 message received from one. Resends
// (DUP) are already stored.
func (s *Store) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if !persistent(cl) {
		return
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.FixedHeader.Dup {
			return
		}
	case packets.Pubrec:
	default: // a PUBACK about to be sent: nothing to keep
		return
	}
	data, payload := encodeMessage(cl.ID, storage.InflightKey, pk)
	s.w.enqueue(newOp(opInflightPut, cl.ID, int(pk.PacketID), data, payload, max(pk.Expiry, 0)))
}

// OnQosComplete forgets a finished QoS flow; its slot in the window may
// take the next queued message.
func (s *Store) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !s.acked(cl, pk.PacketID) {
		s.w.enqueue(newOp(opInflightDelete, cl.ID, int(pk.PacketID)))
	}
}

// OnQosDropped forgets an expired or abandoned QoS flow. When a session is
// taken over, the engine drops the old connection's copies after handing
// them to the new one: those rows stay.
func (s *Store) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !cl.IsTakenOver() && !s.acked(cl, pk.PacketID) {
		s.w.enqueue(newOp(opInflightDelete, cl.ID, int(pk.PacketID)))
	}
}

// OnSysInfoTick keeps the latest $SYS figures.
func (s *Store) OnSysInfoTick(info *system.Info) {
	b, err := storage.SystemInfo{Info: *info.Clone(), T: storage.SysInfoKey, ID: storage.SysInfoKey}.MarshalBinary()
	if err == nil {
		s.w.enqueue(newOp(opSysInfo, b))
	}
}
