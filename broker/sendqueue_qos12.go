package broker

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// QoS 1/2 messages in bytes. The engine puts its own copy of a QoS 1/2
// message, payload included, in each subscriber's in-flight store, and
// keeps it there until the subscriber acknowledges it: a subscriber at
// QoS 1 that stopped reading, with a device publishing 1 MB messages, held
// its send queue's worth of them (256 MB) until limits.write_timeout ended
// it, and one that read but never acknowledged up to mqtt.max_inflight
// (1,024) of them. So a large QoS 1/2 message is counted against the send
// queue's bounds (mqtt.client_queue_bytes, mqtt.client_queue_total_bytes;
// one count per client with its large QoS 0 messages) from when it enters
// the in-flight store (OnQosPublish: the engine's deliveries, and the
// session store's, which tells the send queue hook of each) until it
// leaves it (OnQosComplete, OnQosDropped; or the engine took it back,
// its send queue full, which it tells no hook: such a message is found
// gone when the client is next past a bound) or its client disconnects.
//
// A QoS 1/2 message is never dropped for these bounds: SPEC §9 slows
// publishers down for a subscriber that falls behind rather than dropping
// their messages. One that does not fit waits (on the goroutine that
// delivers it, the publisher's or the session's pump) for the subscriber
// to acknowledge something, in rounds of mqtt.backpressure_wait, at most
// qosWaitRounds; a subscriber that acknowledged something in each round
// is slow, not stuck, and the message is counted over the bound after the
// last. A subscriber that acknowledged nothing in a round is stuck: it is
// disconnected (MQTT 5: DISCONNECT 0x97 quota exceeded, sent if its
// connection takes it within a second), counted in
// tether_mqtt_clients_disconnected_total{reason} and logged at most once a
// minute. A persistent session keeps its messages: the engine keeps the
// in-flight ones for it, the session store their queue rows until they
// are acknowledged, and both are sent again when it reconnects. A clean
// session's unacknowledged large messages end with it, counted in
// tether_mqtt_messages_dropped_total{reason}.
//
// Not waited for, and counted over the bounds: a retained message sent on
// SUBSCRIBE and a client's own message (both on the subscriber's own
// goroutine, which reads the acknowledgements waited for), and the
// broker's own (inline) messages. A
// message resent after a reconnect (DUP) is not counted.

// qosWaitRounds: the most rounds a QoS 1/2 message past a bound waits for
// its subscriber.
const qosWaitRounds = 8

// qosPublish counts pk, a QoS 1/2 message put in cl's in-flight store; it
// waits while pk does not fit and cl acknowledges messages, and
// disconnects cl if it acknowledges none in a round.
func (q *sendQueue) qosPublish(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 || pk.FixedHeader.Dup ||
		len(pk.Payload) < largeMessage || cl.Net.Inline {
		return
	}
	size := int64(len(pk.Payload))
	// A client's own message comes on its reading goroutine, which reads
	// the acknowledgements waited for: it is not waited for either.
	wait := pk.Origin != mqtt.InlineClientId && pk.Origin != cl.ID && !pk.FixedHeader.Retain
	c := q.state(cl)
	if c == nil {
		return // closed: the engine keeps what its session keeps
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for round := 0; ; round++ {
		c.mu.Lock()
		if c.stuck {
			reason := c.stuckFor
			c.mu.Unlock()
			q.lost(cl, 1, reason)
			return
		}
		reason := q.admitLocked(c, size, !wait || round >= qosWaitRounds)
		if reason == admitted {
			if old, ok := c.inflight[pk.PacketID]; ok {
				// Left by a delivery the engine took back unseen.
				c.releaseLocked(q, old)
			} else {
				q.tracked.Add(1)
			}
			if c.inflight == nil {
				c.inflight = map[uint16]int64{}
			}
			c.inflight[pk.PacketID] = size
		}
		if reason == admitted || reason == clientClosed {
			c.mu.Unlock()
			return
		}
		if c.reconcileLocked(q, cl) {
			c.mu.Unlock()
			continue // it held less than counted
		}
		if c.released == nil {
			c.released = make(chan struct{})
		}
		released := c.released
		c.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(q.wait)
		} else {
			timer.Reset(q.wait)
		}
		select {
		case <-released: // it acknowledged something: slow, not stuck
			timer.Stop() // no stale tick after it (Go 1.23 timers)
			continue
		case <-timer.C:
		}
		q.disconnect(cl, c, reason, size)
		return
	}
}

// qosDone releases the QoS 1/2 message cl's in-flight store no longer
// holds under id.
func (q *sendQueue) qosDone(cl *mqtt.Client, id uint16) {
	if q.tracked.Load() == 0 {
		return
	}
	v, ok := q.clients.Load(cl)
	if !ok {
		return
	}
	c := v.(*queueBytes)
	c.mu.Lock()
	if size, ok := c.inflight[id]; ok {
		delete(c.inflight, id)
		q.tracked.Add(-1)
		c.releaseLocked(q, size)
	}
	c.mu.Unlock()
}

// reconcileLocked releases what c counts of messages cl's in-flight
// store no longer holds: those the engine took back when cl's send queue
// was full (it deletes them after telling the hooks that a message was
// dropped, so they are found here). It reports whether it released any.
func (c *queueBytes) reconcileLocked(q *sendQueue, cl *mqtt.Client) bool {
	released := false
	for id, size := range c.inflight {
		if _, ok := cl.State.Inflight.Get(id); !ok {
			delete(c.inflight, id)
			q.tracked.Add(-1)
			c.releaseLocked(q, size)
			released = true
		}
	}
	return released
}

// disconnect ends cl, stuck past a bound with the QoS 1/2 message of
// size bytes that did not fit.
func (q *sendQueue) disconnect(cl *mqtt.Client, c *queueBytes, reason int, size int64) {
	c.mu.Lock()
	already := c.stuck
	if !already {
		c.stuck, c.stuckFor = true, reason
	}
	held, n := len(c.inflight), c.n
	c.mu.Unlock()
	if already {
		q.lost(cl, 1, reason)
		return
	}
	q.disconnected[reason].Add(1)
	q.lost(cl, 1+held, reason)
	bound, key := q.perClient, "mqtt.client_queue_bytes"
	if reason == dropTotalBytes {
		bound, key = q.total, "mqtt.client_queue_total_bytes"
	}
	if q.logged.Allow(cl.ID, time.Now()) {
		q.log.Warn("client disconnected: its QoS 1/2 messages are past a send queue bound and it acknowledged none for a round (logged at most once a minute per client)",
			"client", cl.ID, "bound", key, "bytes", bound, "client_bytes", n, "size", size,
			"all_queues_bytes", q.bytes.Load(), "wait", q.wait, "persistent", !endsWithConnection(cl))
	}
	go func() {
		// A stuck client's writer holds its connection's lock: the
		// DISCONNECT waits for it at most a second.
		if cl.Properties.ProtocolVersion == 5 && q.srv != nil {
			done := make(chan struct{})
			go func() {
				_ = q.srv.DisconnectClient(cl, packets.ErrQuotaExceeded)
				close(done)
			}()
			t := time.NewTimer(time.Second)
			select {
			case <-done:
			case <-t.C:
			}
			t.Stop()
		}
		cl.Stop(packets.ErrQuotaExceeded)
	}()
}

// lost counts n QoS 1/2 messages of cl that a disconnect for a bound
// loses: none for a persistent session, which keeps them.
func (q *sendQueue) lost(cl *mqtt.Client, n, reason int) {
	if endsWithConnection(cl) {
		q.dropped[reason].Add(int64(n))
	}
}

// endsWithConnection reports whether cl's session ends with its
// connection (3.1.1 clean session, MQTT 5 Session Expiry Interval 0), as
// the engine reckons it.
func endsWithConnection(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// Disconnected is how many clients were disconnected, stuck past
// mqtt.client_queue_bytes or mqtt.client_queue_total_bytes with QoS 1/2
// messages.
func (q *sendQueue) Disconnected(reason int) int64 { return q.disconnected[reason].Load() }
