// Package broker assembles Tether's MQTT broker: the mochi-mqtt v2 engine
// with safe capabilities, Tether's listeners (TCP, TLS, WebSocket, WSS),
// the access hook that decides who connects and what they may touch
// (built-in rules, device grants and the operator's auth.rules, compiled
// per connection: auth_acl.go, auth_rules.go), the hooks that feed the
// device data (telemetry.go maps firmware topics to telemetry), the
// Prometheus collector, and an orderly shutdown. What it tells about
// itself (clients, sessions, figures) it gives as plain values of
// broker/info, so that the dashboard does not depend on the engine.
//
// # Tether's hooks as one
//
// The engine has one hook, hookSet (hookset.go), which calls Tether's
// hooks in the order New adds them with the engine's semantics. For the
// events the engine has per message it decides once which hooks provide
// them (asking again only the hooks whose answer varies: ProvidesVaries)
// and passes the packet by pointer to this package's hooks; the engine
// itself asked each hook before each call and copied the 800-byte packet
// into and out of each.
//
// # What blocks a publisher
//
// The engine reads each client's packets on that client's own goroutine,
// and for each PUBLISH runs there, in order: the OnPublish hooks; the
// retained store, when the message is retained; for QoS 1/2 the
// acknowledgement (PUBACK or PUBREC); the routing, which puts the message
// in each subscriber's send queue without waiting; and the OnPublished
// hooks. Whatever a hook waits for, that publisher waits for, and only
// it; while it waits the broker reads nothing more from it, its socket
// buffers fill and TCP slows the sender. Three hooks wait on purpose,
// each bounded and counted in /metrics, and each first flushes the
// acknowledgements of the packets before (listeners.FlushAcks):
//
//   - PublishLimit (limits.go): a client over its PUBLISH rate
//     (limits.device_publish_rate, limits.publish_rate_per_client) waits
//     for its token, at most one token's interval per packet
//     (tether_publish_throttled_total). The broker's own publishes are
//     not limited.
//   - Backpressure (backpressure.go): a QoS 1/2 PUBLISH that goes to a
//     subscriber above its high-water mark waits for it to drain, in
//     rounds of mqtt.backpressure_wait while it drains at least an eighth
//     of that in each (at most 8); a subscriber that drains less in a
//     round is skipped until it does (tether_backpressure_*). Shared
//     subscriptions, QoS 0 and the publisher's own subscriptions are not
//     waited for.
//   - The session store (broker/sessions, the last hook): a QoS 1/2
//     PUBLISH that is retained or goes to a persistent session (online
//     or not) waits, before its acknowledgement, for the group commit
//     that makes it durable, at most the store's CommitTimeout (2 s);
//     while SQLite fails it does not wait and the acknowledgement is
//     counted as not durable (tether_store_acks_not_durable_total).
//
// The acknowledgement itself goes to the publisher's own socket: the
// listener holds the acknowledgements of what it read in one go and
// writes them together (listeners/acks.go), and a publisher that does
// not read what it is sent can make only its own writes wait. Nothing
// else waits: the telemetry, command and twin hooks queue work for their
// store's writer and drop it, counted, when the queue is full (hooks
// never do SQLite I/O themselves); the access checks are in memory; a
// message for a persistent session is delivered by the session store's
// queue, not on the publisher's goroutine; and a subscriber whose send
// queue (mqtt.client_queue_size) or in-flight window (mqtt.max_inflight)
// is full has the message dropped by the engine, not waited for, unless
// Backpressure held the publisher back first. A QoS 0 PUBLISH waits only
// for the rate limit. (A new subscription's retained messages beyond its
// send queue are written on the subscriber's goroutine, retained.go: they
// hold up that subscriber, never a publisher.) A large QoS 0 message
// (8 KiB or more) past a send queue's bytes (mqtt.client_queue_bytes,
// mqtt.client_queue_total_bytes; sendqueue.go) is dropped for that
// subscriber, not waited for; a large QoS 1/2 message past them waits for
// its subscriber to acknowledge something, and a subscriber that
// acknowledges nothing for a round is disconnected (sendqueue_qos12.go).
package broker
