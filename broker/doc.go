// Package broker assembles Tether's MQTT broker: the mochi-mqtt v2 engine
// with safe capabilities, Tether's listeners (TCP, TLS, WebSocket, WSS),
// the access hook that decides who connects and what they may touch
// (built-in rules, device grants and the operator's auth.rules, compiled
// per connection: auth_acl.go, auth_rules.go), the hooks that feed the
// device data (telemetry.go maps firmware topics to telemetry), the
// Prometheus collector, and an orderly shutdown.
//
// Hooks run on the publishing client's goroutine: nothing here does SQLite
// I/O synchronously inside a hook; work for the database is queued and
// written in batches by the devices package.
package broker
