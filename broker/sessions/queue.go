package sessions

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker/info"
)

// Each persistent session has a queue: the QoS 1/2 messages acknowledged
// to their publishers and not yet handed to the session's inflight window.
// The queue's rows are on disk (mqtt_queue); in memory a session keeps its
// counts and, only while it is online and draining, a bounded read-ahead.
// So an offline session's memory does not grow with its queue.
//
// Every QoS 1/2 message for a persistent session goes through its queue,
// online or not (one path, one order): OnPublish appends it, the engine is
// told not to deliver it (Divert), and the session's pump hands queued
// messages to the window in order, up to min(mqtt.max_inflight, the
// client's Receive Maximum) unacknowledged, as acknowledgements free
// slots. Appends to one queue take its lock and go to the writer in
// sequence order, so what is committed is always a prefix of the queue.

// readAhead is the most queued messages an online session holds in
// memory, and readAheadBytes the most bytes of them (beyond its first):
// 256 queued messages of 1 MB were 256 MB read from disk for each
// session that came back to them.
const (
	readAhead      = 256
	readAheadBytes = 8 << 20
)

// route is one message's persistent recipients, from OnPublish to
// OnPublished. to is not changed after OnPublish.
type route struct {
	to     map[string]bool
	inline bool
}

// item is one queued message for one session.
type item struct {
	seq    int64
	qos    byte
	retain bool
	ids    []int
	pk     packets.Packet
	size   int64
}

// queue is one persistent session's queue state.
type queue struct {
	id   string
	wake chan struct{} // buffered 1

	// mu guards the fields below.
	mu      sync.Mutex
	count   int
	bytes   int64
	next    int64 // the next sequence number
	sent    int64 // the highest sequence number handed to the window
	loaded  int64 // the highest sequence number in buf, or sent
	buf     []item
	bufSize int64            // the bytes of buf's messages
	caught  bool             // buf holds every queued message after sent
	cl      *mqtt.Client     // the connection draining it; nil when offline
	running bool             // a pump runs for it
	out     map[uint16]int64 // packet id -> seq of delivered, unacknowledged messages
	pid     uint16           // the packet id last given out (reserve; the pump's own)
	dropped int64
	logged  time.Time // last refusal logged
}

func (s *Store) queueFor(id string) *queue {
	if v, ok := s.queues.Load(id); ok {
		return v.(*queue)
	}
	v, _ := s.queues.LoadOrStore(id, &queue{id: id, next: 1, wake: make(chan struct{}, 1)})
	return v.(*queue)
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// enqueueMessage appends it to session id's queue, on disk, and returns
// the batch that commits it; false when the queue is full and the message
// was refused for that session.
func (s *Store) enqueueMessage(id string, it item, data, payload []byte) (*batch, bool) {
	q := s.queueFor(id)
	it.size = int64(len(data) + len(payload))
	q.mu.Lock()
	if reason := s.full(q, it.size); reason != "" {
		q.dropped++
		logNow := time.Since(q.logged) >= time.Minute
		if logNow {
			q.logged = time.Now()
		}
		dropped := q.dropped
		q.mu.Unlock()
		s.metrics.queueDropped.Inc()
		if logNow {
			s.log.Warn("session queue full: message refused for this session",
				"client", id, "reason", reason, "dropped_total", dropped)
		}
		if s.opts.Refused != nil {
			s.opts.Refused(id, it.pk, "queue full: "+reason)
		}
		return nil, false
	}
	it.seq = q.next
	q.next++
	q.count++
	q.bytes += it.size
	s.total.Add(it.size)
	start := false
	if q.cl != nil {
		if q.caught && len(q.buf) < readAhead && (len(q.buf) == 0 || q.bufSize+it.size <= readAheadBytes) {
			q.buf = append(q.buf, it)
			q.bufSize += it.size
			q.loaded = it.seq
		} else {
			q.caught = false
		}
		if !q.running {
			q.running, start = true, true
		}
	}
	retain := 0
	if it.retain {
		retain = 1
	}
	b := s.w.enqueue(newOp(opQueuePut, id, it.seq, int(it.qos), retain, formatIDs(it.ids), data, payload, max(it.pk.Expiry, 0)))
	cl := q.cl
	q.mu.Unlock()
	if start {
		go s.pump(q)
	} else if cl != nil {
		q.signal()
	}
	return b, true
}

// full says why q cannot take a message of size bytes, or "".
func (s *Store) full(q *queue, size int64) string {
	switch {
	case q.count >= s.opts.MaxQueuedMessages:
		return fmt.Sprintf("%d messages (mqtt.max_queued_messages)", q.count)
	case q.bytes+size > s.opts.MaxQueuedBytes:
		return fmt.Sprintf("%d bytes (mqtt.max_queued_bytes)", q.bytes)
	case s.total.Load()+size > s.opts.MaxStoreBytes:
		return fmt.Sprintf("all queues hold %d bytes (mqtt.max_queue_store_bytes)", s.total.Load())
	}
	return ""
}

// online starts draining cl's queue.
func (s *Store) online(cl *mqtt.Client) {
	q := s.queueFor(cl.ID)
	q.mu.Lock()
	q.cl = cl
	q.buf, q.bufSize, q.caught = nil, 0, false
	if q.count == 0 {
		// Nothing queued: what comes next can go through memory.
		q.caught, q.loaded = true, q.next-1
	}
	start := q.count > 0 && !q.running
	if start {
		q.running = true
	}
	q.mu.Unlock()
	if start {
		go s.pump(q)
	}
	q.signal()
}

// offline stops draining cl's queue; what its read-ahead held stays on
// disk.
func (s *Store) offline(cl *mqtt.Client) {
	v, ok := s.queues.Load(cl.ID)
	if !ok {
		return
	}
	q := v.(*queue)
	q.mu.Lock()
	if q.cl == cl {
		q.cl = nil
		q.buf, q.bufSize, q.caught = nil, 0, false
		q.loaded = q.sent
	}
	q.mu.Unlock()
	q.signal()
}

// acked ends the flow of packet id towards cl, and wakes cl's pump: a
// slot is free. It reports whether the message came from the queue (and
// its queue row is now deleted).
func (s *Store) acked(cl *mqtt.Client, id uint16) bool {
	v, ok := s.queues.Load(cl.ID)
	if !ok {
		return false
	}
	q := v.(*queue)
	q.mu.Lock()
	seq, ok := q.out[id]
	if ok {
		delete(q.out, id)
		s.w.enqueue(newOp(opQueueDelete, q.id, seq))
	}
	q.mu.Unlock()
	q.signal()
	return ok
}

// dropQueue forgets session id's queue in memory (its rows are deleted by
// the caller's op).
func (s *Store) dropQueue(id string) {
	v, ok := s.queues.LoadAndDelete(id)
	if !ok {
		return
	}
	q := v.(*queue)
	q.mu.Lock()
	s.total.Add(-q.bytes)
	q.count, q.bytes, q.buf, q.bufSize, q.cl, q.out = 0, 0, nil, 0, nil, nil
	q.mu.Unlock()
	q.signal()
}

// window is how many messages cl may have unacknowledged.
func (s *Store) window(cl *mqtt.Client) int {
	n := int(s.Opts.Capabilities.MaximumInflight)
	if rm := int(cl.Properties.Props.ReceiveMaximum); rm > 0 && rm < n {
		n = rm
	}
	return max(n, 1)
}

// pump hands q's messages to its session's window until the queue is
// empty or the session goes offline. One pump runs per queue at a time.
func (s *Store) pump(q *queue) {
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	wait := func(d time.Duration) {
		idle.Reset(d)
		select {
		case <-q.wake:
		case <-idle.C:
		}
		if !idle.Stop() {
			select {
			case <-idle.C:
			default:
			}
		}
	}
	for {
		q.mu.Lock()
		cl := q.cl
		if cl == nil || q.count == 0 || cl.Closed() {
			q.running = false
			q.mu.Unlock()
			return
		}
		room := s.window(cl) - cl.State.Inflight.Len()
		if room <= 0 {
			q.mu.Unlock()
			wait(time.Second)
			continue
		}
		if len(q.buf) == 0 {
			after := q.loaded
			q.mu.Unlock()
			items, err := s.readQueue(q.id, after, readAhead, readAheadBytes)
			if err != nil {
				s.log.Error("session queue: read failed", "client", q.id, "error", err)
				wait(time.Second)
				continue
			}
			q.mu.Lock()
			if q.cl != cl {
				q.mu.Unlock()
				continue
			}
			for _, it := range items {
				if it.seq > q.loaded {
					q.buf = append(q.buf, it)
					q.bufSize += it.size
					q.loaded = it.seq
				}
			}
			q.caught = q.loaded >= q.next-1
			if len(q.buf) == 0 {
				// Queued but not yet committed, or lost to a store
				// fault: recount from disk once the writer is idle.
				q.mu.Unlock()
				if s.w.empty() && s.w.healthy() == nil {
					s.recount(q)
				}
				wait(2 * time.Millisecond)
				continue
			}
		}
		n := min(room, len(q.buf))
		batch := q.buf[:n:n]
		q.buf = q.buf[n:]
		for _, it := range batch {
			q.bufSize -= it.size
		}
		if len(q.buf) == 0 {
			q.buf, q.bufSize = nil, 0
		}
		q.mu.Unlock()
		for _, it := range batch {
			if !s.deliver(q, cl, it) {
				break
			}
		}
	}
}

// deliver hands it to cl's window as the engine's publishToClient does:
// a packet id, the inflight store, the hooks that follow deliveries, the
// send quota, and the write. The engine resends it after a reconnect; its
// queue row stays on disk until the client acknowledges it (acked), so a
// restart sends it again rather than losing it.
//
// It reports false, handing nothing, when cl no longer holds the session
// (taken over, gone) or has no packet id free: the message and those
// after it are read from disk again for the next connection.
func (s *Store) deliver(q *queue, cl *mqtt.Client, it item) bool {
	q.mu.Lock()
	if q.cl != cl {
		q.buf, q.bufSize, q.caught, q.loaded = nil, 0, false, q.sent
		q.mu.Unlock()
		return false
	}
	q.mu.Unlock()
	done := func() {
		q.mu.Lock()
		if _, ok := s.queues.Load(q.id); ok && q.count > 0 {
			q.count--
			q.bytes -= it.size
			s.total.Add(-it.size)
		}
		q.sent = max(q.sent, it.seq)
		q.loaded = max(q.loaded, q.sent)
		q.mu.Unlock()
	}
	out := it.pk.Copy(false)
	out.FixedHeader.Qos, out.FixedHeader.Retain, out.FixedHeader.Dup = it.qos, it.retain, false
	out.Properties.SubscriptionIdentifier = it.ids
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	expired := out.Expiry > 0 && out.Expiry < time.Now().Unix()
	acl := s.acl.Load()
	if expired || (acl != nil && !(*acl)(cl, out.TopicName)) {
		s.w.enqueue(newOp(opQueueDelete, q.id, it.seq))
		done()
		return true
	}
	added, ok := q.reserve(cl, &out)
	if !ok {
		q.mu.Lock()
		q.buf, q.bufSize, q.caught, q.loaded = nil, 0, false, q.sent
		q.mu.Unlock()
		return false
	}
	if added {
		if srv := s.srv.Load(); srv != nil {
			atomic.AddInt64(&srv.Info.Inflight, 1)
		}
	}
	for _, h := range s.opts.Deliveries {
		h.OnQosPublish(cl, out, out.Created, 0)
	}
	cl.State.Inflight.DecreaseSendQuota()
	q.mu.Lock()
	if q.out == nil {
		q.out = map[uint16]int64{}
	}
	q.out[out.PacketID] = it.seq
	q.mu.Unlock()
	done()
	s.metrics.queueDelivered.Inc()
	_ = cl.WritePacket(out) // if it fails, the engine resends it on reconnect
	return true
}

// reserve gives out a free packet identifier and puts it in cl's inflight
// store, under cl's lock as the engine's NextPacketID does, so that no
// other delivery takes the same id in between. It counts down from 65535
// while clients count their own ids up from 1: the engine keeps both
// directions' ids in one store and refuses a client's SUBSCRIBE (0x91,
// "packet identifier in use") or QoS 2 PUBLISH whose id the broker is
// using for a message to it, although the two directions' ids are
// independent [MQTT-2.3.1]. A session returning with a queue gets its
// first messages at once, while its client sends its first SUBSCRIBE with
// id 1; mosquitto_sub saw "All subscription requests were denied". ok is
// false when every id is in use.
func (q *queue) reserve(cl *mqtt.Client, out *packets.Packet) (added, ok bool) {
	cl.Lock()
	defer cl.Unlock()
	for range 65535 {
		if q.pid <= 1 {
			q.pid = 65535
		} else {
			q.pid--
		}
		if _, used := cl.State.Inflight.Get(q.pid); !used {
			out.PacketID = q.pid
			return cl.State.Inflight.Set(*out), true
		}
	}
	return false, false
}

// readQueue reads up to n of session id's queued messages after seq, and
// no more once they hold maxBytes (at least one).
func (s *Store) readQueue(id string, after int64, n int, maxBytes int64) ([]item, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := s.db.R.QueryContext(ctx, `SELECT seq, qos, retain, sub_ids, data, payload, expires_at
		FROM mqtt_queue WHERE client_id = ? AND seq > ? ORDER BY seq LIMIT ?`, id, after, n)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []item
	var size int64
	for rows.Next() {
		var it item
		var qos, retain int
		var ids string
		var data, payload []byte
		var expires int64
		if err := rows.Scan(&it.seq, &qos, &retain, &ids, &data, &payload, &expires); err != nil {
			return nil, err
		}
		it.size = int64(len(data) + len(payload))
		m, err := decodeMessage(data, payload)
		if err != nil {
			s.log.Warn("session queue: unreadable message skipped", "client", id, "error", err)
			s.w.enqueue(newOp(opQueueDelete, id, it.seq))
			continue
		}
		it.qos, it.retain, it.ids = byte(qos), retain == 1, parseIDs(ids)
		it.pk = m.ToPacket()
		it.pk.Expiry = expires
		out = append(out, it)
		if size += it.size; size >= maxBytes {
			break
		}
	}
	return out, rows.Err()
}

// recount sets q's counts from disk.
func (s *Store) recount(q *queue) {
	var count int
	var bytes, last sql.NullInt64
	err := s.db.R.QueryRow(`SELECT COUNT(*), SUM(LENGTH(data) + LENGTH(payload)), MAX(seq) FROM mqtt_queue WHERE client_id = ?`, q.id).
		Scan(&count, &bytes, &last)
	if err != nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.buf != nil || q.next-1 > last.Int64 {
		return // something was queued meanwhile
	}
	s.total.Add(bytes.Int64 - q.bytes)
	q.count, q.bytes = count, bytes.Int64
}

// loadQueues reads every session's queue counts, at start-up.
func (s *Store) loadQueues(ctx context.Context) error {
	rows, err := s.db.W.QueryContext(ctx, s.mine(`SELECT client_id, COUNT(*), SUM(LENGTH(data) + LENGTH(payload)), MAX(seq)
		FROM mqtt_queue`, "client_id")+` GROUP BY client_id`)
	if err != nil {
		return fmt.Errorf("session store: load queues: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var count int
		var bytes, last int64
		if err := rows.Scan(&id, &count, &bytes, &last); err != nil {
			return fmt.Errorf("session store: load queues: %w", err)
		}
		q := s.queueFor(id)
		q.count, q.bytes, q.next = count, bytes, last+1
		s.total.Add(bytes)
	}
	return rows.Err()
}

// Session is one persistent session as GET /sessions shows it.
type Session = info.Session

// Sessions lists the persistent sessions the engine holds (owner is the
// session's username), in no particular order.
func (s *Store) Sessions() []Session {
	srv := s.srv.Load()
	if srv == nil {
		return nil
	}
	var out []Session
	for id, cl := range srv.Clients.GetAll() {
		if cl.Net.Inline || !persistent(cl) || takenOver(cl) {
			continue
		}
		se := Session{ClientID: id, Owner: string(cl.Properties.Username), Online: !cl.Closed()}
		if v, ok := s.queues.Load(id); ok {
			q := v.(*queue)
			q.mu.Lock()
			se.Queued, se.Dropped = q.count, q.dropped
			q.mu.Unlock()
		}
		if !se.Online {
			if stop := cl.StopTime(); stop > 0 {
				t := time.Unix(stop+sessionExpiry(cl, s.Opts.Capabilities), 0).UTC()
				se.ExpiresAt = &t
			}
		}
		out = append(out, se)
	}
	return out
}

// QueueStoreUse returns the bytes all queues hold and their bound
// (mqtt.max_queue_store_bytes).
func (s *Store) QueueStoreUse() (used, limit int64) {
	return s.total.Load(), s.opts.MaxStoreBytes
}

// QueueStoreWarning says when all queues together hold more than 90 % of
// their bound (mqtt.max_queue_store_bytes), or "".
func (s *Store) QueueStoreWarning() string {
	used, limit := s.QueueStoreUse()
	if used*10 <= limit*9 {
		return ""
	}
	return fmt.Sprintf("session queues hold %d of %d bytes (%d%% of mqtt.max_queue_store_bytes): messages for offline sessions will soon be refused",
		used, limit, used*100/limit)
}

// PurgeSession removes session clientID entirely: from the engine, if it
// still holds it (a connected client is disconnected first), its
// subscriptions, inflight messages and the session itself; from the store
// its queue and every row (queued; a deletion queued after the session's
// last write wins over it). It implements broker.SessionPurger, which the
// access hook calls once it has taken the engine's copy; it does not
// block and is safe to call for an unknown id.
func (s *Store) PurgeSession(clientID string) {
	if srv := s.srv.Load(); srv != nil {
		if cl, ok := srv.Clients.Get(clientID); ok && !cl.Net.Inline {
			if !cl.Closed() {
				if cl.Properties.ProtocolVersion == 5 {
					_ = srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
				}
				cl.Stop(packets.ErrSessionTakenOver)
			}
			for filter := range cl.State.Subscriptions.GetAll() {
				s.persist.remove(clientID, filter)
			}
			srv.UnsubscribeClient(cl)
			cl.ClearInflights()
			srv.Clients.Delete(clientID)
		}
	}
	s.dropQueue(clientID)
	s.w.enqueue(newOp(opClientDelete, clientID))
}
