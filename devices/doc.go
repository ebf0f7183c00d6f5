// Package devices is Tether's device registry: device identities and
// secrets, their topic grants (grants.go; filters are checked by the
// topic subpackage), users, API tokens, presence, telemetry history,
// commands with tracked outcomes, desired/reported twins and the audit
// log, all kept in one database (package database: a SQLite file,
// modernc.org/sqlite, no cgo; or PostgreSQL shared by a cluster's nodes,
// whose registry changes reach the other nodes: registry_shared.go); and, in
// memory, the login limiter and intrusion detection's bans (logins.go,
// bans.go).
//
// It knows nothing of HTTP or MQTT: the broker and the dashboard call it.
package devices
