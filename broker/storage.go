package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/tether-iot/tether/devices"
)

// Storage is the engine's session store on SQLite: persistent sessions
// with their subscriptions, their unacknowledged QoS 1/2 messages, and
// retained messages survive a restart and a kill -9. Sessions that end
// with their connection (clean session, or Session Expiry Interval 0) are
// not written.
//
// Group commit: hooks never write to SQLite themselves; they queue changes
// for one writer goroutine, which commits everything queued since its last
// transaction in the next one. A QoS 1/2 PUBLISH is the one place where a
// client waits: the engine writes PUBACK/PUBREC before it hands the message
// to the subscribers' sessions, so OnPublish records the message with its
// persistent recipients (and the retained copy) and blocks the publisher's
// goroutine until the batch holding them has committed. Many publishers
// share one transaction. A message that no persistent session subscribes
// to (and is not retained) costs one lookup in persistIndex, no write and
// no wait. If SQLite fails, routing goes on without waiting,
// Healthy reports the fault, and the writer retries with backoff.
//
// Add Storage as the last hook, so that it sees each PUBLISH as the other
// hooks left it, and call Attach before the broker starts.
type Storage struct {
	mqtt.HookBase

	db      *devices.DB
	log     *slog.Logger
	opts    StorageOptions
	metrics *storeMetrics
	w       *writer

	srv     atomic.Pointer[mqtt.Server]
	loading atomic.Bool // true until the engine has read the store
	seq     atomic.Int64
	pubs    sync.Map // *mqtt.Client -> *pubState
	persist *persistIndex

	prepared sync.Once
	prepErr  error
	started  atomic.Bool // Init started the writer
	stopOnce sync.Once
}

// StorageOptions tune the store. The zero value means the defaults.
type StorageOptions struct {
	// Logger receives the store's log; nil means slog.Default().
	Logger *slog.Logger
	// CommitTimeout is the longest a publisher waits for its batch to
	// commit before its acknowledgement goes anyway (counted in
	// tether_store_acks_not_durable_total). 0 means 2 s.
	CommitTimeout time.Duration
	// MaxQueueBytes bounds the memory that changes waiting for SQLite may
	// hold while it fails. 0 means 64 MiB.
	MaxQueueBytes int
}

// pubState follows one publisher's current PUBLISH from OnPublish to
// OnPublished. The engine calls both on the publisher's goroutine.
type pubState struct {
	seq      int64       // the message recorded for fan-out; 0 if none
	retained atomic.Bool // OnPublish already wrote the retained copy
}

// NewStorage returns a store on db. Add it to the broker with
// Options.Hooks, then call Attach with the broker's engine.
func NewStorage(db *devices.DB, opts *StorageOptions) *Storage {
	var o StorageOptions
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 2 * time.Second
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = 64 << 20
	}
	s := &Storage{db: db, log: o.Logger.With("component", "store"), opts: o, metrics: newStoreMetrics(), persist: newPersistIndex()}
	s.w = newWriter(db.W, s.log, o.MaxQueueBytes, s.metrics)
	s.w.snapshot = s.snapshot
	s.metrics.queueBytes = s.w.queuedBytes
	s.metrics.healthy = s.Healthy
	s.loading.Store(true)
	return s
}

// Attach gives the store the engine it serves: it needs it to find a
// message's persistent recipients and to rebuild itself after a fault.
func (s *Storage) Attach(srv *mqtt.Server) { s.srv.Store(srv) }

// Healthy returns why the store is not writing, or nil.
func (s *Storage) Healthy() error { return s.w.healthy() }

// ID implements mqtt.Hook.
func (s *Storage) ID() string { return "tether-storage" }

// Provides implements mqtt.Hook. The engine asks it for every event, so
// it is a switch, not a search.
func (s *Storage) Provides(b byte) bool {
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

// Init creates or migrates the store's tables and starts the writer.
func (s *Storage) Init(config any) error {
	ctx := context.Background()
	if err := s.db.Migrate(ctx, storeComponent, storeSchema); err != nil {
		return fmt.Errorf("session store: %w", err)
	}
	if err := s.w.prepare(ctx); err != nil {
		return err
	}
	s.started.Store(true)
	go s.w.run()
	return nil
}

// Stop writes what is queued and stops the writer. The engine calls it
// from Server.Close, after every client has gone. Idempotent.
func (s *Storage) Stop() error {
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
func (s *Storage) OnStarted() { s.loading.Store(false) }

// OnConnect turns off server-to-client topic aliases for persistent
// sessions: an alias means nothing on the next connection, and a stored
// message must carry its topic. (The server may always choose not to use
// aliases [MQTT-3.3.2-12 ff.].)
func (s *Storage) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if persistent(cl) {
		cl.Properties.Props.TopicAliasMaximum = 0
	}
	return nil
}

func (s *Storage) putClient(cl *mqtt.Client, disconnectedAt int64) {
	s.w.enqueue(newOp(opClientPut, cl.ID, encodeClient(cl), sessionExpiry(cl, s.Opts.Capabilities), disconnectedAt))
}

// OnSessionEstablished records a persistent session, or forgets an earlier
// persistent session under the same client id.
func (s *Storage) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if persistent(cl) {
		s.persist.addAll(cl) // subscriptions it may have inherited
		s.putClient(cl, 0)
		return
	}
	s.w.enqueue(newOp(opClientDelete, cl.ID))
}

func takenOver(cl *mqtt.Client) bool {
	return cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
}

// OnDisconnect records when a persistent session went offline, or removes
// a session that ends here. A session taken over by a new connection is
// the new connection's to write.
func (s *Storage) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if v, ok := s.pubs.LoadAndDelete(cl); ok {
		if st := v.(*pubState); st.seq != 0 {
			s.w.enqueue(newOp(opMessageDelete, st.seq))
		}
	}
	if s.loading.Load() || cl.Net.Inline || takenOver(cl) {
		return
	}
	if expire {
		s.w.enqueue(newOp(opClientDelete, cl.ID))
		return
	}
	if persistent(cl) {
		s.persist.addAll(cl) // MQTT 5 DISCONNECT may have made it persistent
		s.putClient(cl, time.Now().Unix())
	}
}

// OnWillSent records that a persistent session's will has gone.
func (s *Storage) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !takenOver(cl) {
		s.putClient(cl, cl.StopTime())
	}
}

// OnClientExpired removes an expired session and all it held.
func (s *Storage) OnClientExpired(cl *mqtt.Client) {
	for filter := range cl.State.Subscriptions.GetAll() {
		s.persist.remove(cl.ID, filter)
	}
	s.w.enqueue(newOp(opClientDelete, cl.ID))
}

// OnSubscribed records a persistent session's granted subscriptions.
func (s *Storage) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
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
func (s *Storage) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
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

func (s *Storage) pubState(cl *mqtt.Client) *pubState {
	if v, ok := s.pubs.Load(cl); ok {
		return v.(*pubState)
	}
	st := &pubState{}
	s.pubs.Store(cl, st)
	return st
}

// OnPublish makes a QoS 1/2 PUBLISH durable before the engine acknowledges
// it: the retained copy, and the message with each persistent session it
// will go to, are queued together and the publisher waits for their
// commit. QoS 0 and the broker's own messages do not wait.
func (s *Storage) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	retain := pk.FixedHeader.Retain && s.Opts.Capabilities.RetainAvailable != 0
	srv := s.srv.Load()
	fanout := srv != nil && s.persist.matches(pk.TopicName)
	var st *pubState
	if retain || fanout {
		st = s.pubState(cl)
	} else if v, ok := s.pubs.Load(cl); ok {
		st = v.(*pubState)
	}
	if st != nil && st.seq != 0 {
		// The previous PUBLISH never reached OnPublished (its ack could
		// not be written), so the engine did not route it either.
		s.w.enqueue(newOp(opMessageDelete, st.seq))
		st.seq = 0
	}
	if !retain && !fanout {
		return pk, nil // the fast path: nothing to make durable
	}
	var ops []op
	if retain {
		ops = append(ops, retainedOp(pk))
		st.retained.Store(true)
	}
	if fanout {
		seq := s.seq.Add(1)
		if targets := s.pendingOps(srv, cl, pk, seq); len(targets) > 0 {
			data, payload := encodeMessage("", storage.InflightKey, pk)
			ops = append(ops, newOp(opMessagePut, seq, data, payload, max(pk.Expiry, 0)))
			ops = append(ops, targets...)
			st.seq = seq
		}
	}
	if len(ops) == 0 {
		return pk, nil
	}
	s.wait(s.w.enqueue(ops...))
	return pk, nil
}

// pendingOps lists the persistent sessions that pk will be queued for, as
// the engine's publishToSubscribers will choose them. Shared subscriptions
// are left out: the engine picks their member at random later on, and the
// inflight row written then covers them (without the wait).
func (s *Storage) pendingOps(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet, seq int64) []op {
	caps := s.Opts.Capabilities
	var ops []op
	for id, sub := range srv.Topics.Subscribers(pk.TopicName).Subscriptions {
		if sub.NoLocal && id == cl.ID {
			continue
		}
		to, ok := srv.Clients.Get(id)
		if !ok || !persistent(to) || to.State.Inflight.Len() >= int(caps.MaximumInflight) {
			continue
		}
		qos := min(pk.FixedHeader.Qos, sub.Qos, caps.MaximumQos)
		if qos == 0 {
			continue
		}
		retain := 0
		if pk.FixedHeader.Retain && to.Properties.ProtocolVersion == 5 && sub.RetainAsPublished {
			retain = 1
		}
		var ids []int
		for _, n := range sub.Identifiers {
			ids = append(ids, n)
		}
		sort.Ints(ids)
		ops = append(ops, newOp(opPendingPut, seq, id, int(qos), retain, formatIDs(ids)))
	}
	return ops
}

// wait blocks until b has committed, the store fails, or CommitTimeout.
func (s *Storage) wait(b *batch) {
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

// OnPublished removes the fan-out record: the engine has queued the
// message for every session, and OnQosPublish has written those.
func (s *Storage) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || pk.FixedHeader.Qos == 0 {
		return
	}
	if v, ok := s.pubs.Load(cl); ok {
		if st := v.(*pubState); st.seq != 0 {
			s.w.enqueue(newOp(opMessageDelete, st.seq))
			st.seq = 0
		}
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
func (s *Storage) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if v, ok := s.pubs.Load(cl); ok && v.(*pubState).retained.CompareAndSwap(true, false) {
		return
	}
	s.w.enqueue(retainedOp(pk))
}

// OnRetainedExpired removes an expired retained message.
func (s *Storage) OnRetainedExpired(topic string) {
	s.w.enqueue(newOp(opRetainedDelete, topic))
}

// OnQosPublish records a QoS 1/2 message queued for a persistent session,
// and the PUBREC state of a QoS 2 message received from one. Resends
// (DUP) are already stored.
func (s *Storage) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
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

// OnQosComplete forgets a finished QoS flow.
func (s *Storage) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) {
		s.w.enqueue(newOp(opInflightDelete, cl.ID, int(pk.PacketID)))
	}
}

// OnQosDropped forgets an expired or abandoned QoS flow. When a session is
// taken over, the engine drops the old connection's copies after handing
// them to the new one: those rows stay.
func (s *Storage) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !cl.IsTakenOver() {
		s.w.enqueue(newOp(opInflightDelete, cl.ID, int(pk.PacketID)))
	}
}

// OnSysInfoTick keeps the latest $SYS figures.
func (s *Storage) OnSysInfoTick(info *system.Info) {
	b, err := storage.SystemInfo{Info: *info.Clone(), T: storage.SysInfoKey, ID: storage.SysInfoKey}.MarshalBinary()
	if err == nil {
		s.w.enqueue(newOp(opSysInfo, b))
	}
}
