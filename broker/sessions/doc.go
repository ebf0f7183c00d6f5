// Package sessions is the MQTT engine's session store: persistent
// sessions with their subscriptions, their offline queues and
// unacknowledged QoS 1/2 messages, and retained messages, on SQLite in a
// file of its own (sessions.db in the data directory) with its own
// writer. It is a mochi-mqtt hook (Store): add it as the broker's last
// hook and Attach the engine before the broker starts.
//
// A QoS 1/2 message is appended, before its publisher's acknowledgement,
// to the on-disk queue of every persistent session it goes to; the store
// then hands each session its queue, in order, through its inflight
// window (queue.go). Hooks never write to SQLite on the engine's
// goroutines: changes are queued for one writer goroutine that commits
// them in groups (writer.go), and only a QoS 1/2 publisher waits, for its
// own group.
//
// In a cluster whose nodes share PostgreSQL (OpenShared, shared.go) the
// same tables live there, each session row naming the node that holds
// it, and a session moves to the node its client connects to (Release,
// Adopt) or, when its node is gone, to a surviving node (AdoptOrphans).
package sessions
