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
// # What blocks a publisher
//
// The engine reads each client's packets on that client's own goroutine,
// and on it runs the OnPublish hooks, routes the message to the
// subscribers and writes the acknowledgement. Whatever a hook waits for,
// that publisher waits for, and only it; while it waits the broker reads
// nothing more from it, its socket buffers fill and TCP slows the sender.
// Three hooks wait on purpose, each bounded and counted in /metrics:
//
//   - PublishLimit (limits.go): a client over its PUBLISH rate
//     (limits.device_publish_rate, limits.publish_rate_per_client) waits
//     for its token, at most one token's interval per packet
//     (tether_publish_throttled_total).
//   - Backpressure (backpressure.go): a QoS 1/2 PUBLISH that goes to a
//     subscriber above its high-water mark waits for it to drain, at most
//     mqtt.backpressure_wait; a subscriber that does not drain in time is
//     skipped until it does (tether_backpressure_*).
//   - The session store (broker/sessions, the last hook): a QoS 1/2
//     PUBLISH that is retained or goes to a persistent session waits,
//     before its PUBACK, for the group commit that makes it durable, at
//     most the store's CommitTimeout (2 s); while SQLite fails it does not
//     wait and the acknowledgement is counted as not durable
//     (tether_store_acks_not_durable_total).
//
// Then the engine writes the acknowledgement to the publisher's own
// socket. Nothing else waits: the telemetry, command and twin hooks queue
// work for their store's writer and drop it, counted, when the queue is
// full (hooks never do SQLite I/O themselves); the access checks are in
// memory; and a subscriber whose send queue (mqtt.client_queue_size) is
// full has the message dropped by the engine, not waited for, unless
// Backpressure held the publisher back first. A QoS 0 PUBLISH waits only
// for the rate limit.
package broker
