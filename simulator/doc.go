// Package simulator is Tether's outside view of a broker: a fleet simulator
// and a load generator. It speaks only MQTT (through paho) and HTTP, like
// any device or client would, and imports nothing of the broker, the
// registry or the dashboard.
//
// The fleet simulator (RunSim, behind `tether sim`) runs one MQTT client per
// simulated device. Each device has its own identity (client id = username =
// device id, password = the device secret), either provisioned in bulk
// through the HTTP API (Provisioner) or read from a credentials file
// (ReadCredentials). Devices publish telemetry made by the metric generators
// of their profile (Fleet, Profile, Metric), answer commands, follow the
// desired twin state and reconnect with backoff. A progress line goes to the
// progress writer every few seconds and RunSim returns a Summary.
//
// The load generator (RunBench, behind `tether bench`) runs one scenario
// against any MQTT broker: fanin (P publishers to one wildcard subscriber),
// fanout (one publisher to S subscribers), pairs (N publisher/subscriber
// pairs) or conns (C idle connections). Each payload carries the time it
// was sent, so the Result holds end-to-end latency percentiles besides
// throughput, loss and connect rate.
//
// Both refuse a broker that is not on a loopback address unless
// AllowRemote is set (Endpoint.CheckLoopback). Every loop is bounded by a
// context, a duration or a count, and every goroutine started here is
// waited for before the function that started it returns.
//
// Files, by noun: endpoint.go (broker URL and transport), dial.go (TCP, TLS
// and WebSocket connections), wsconn.go (the WebSocket client: upgrade and
// frames, on internal/wsframe), client.go (paho options), credentials.go,
// provision.go (HTTP bulk registration), profile.go and generator.go
// (fleet YAML and metric generators), device.go, commands.go and twin.go
// (one simulated device), sim.go (the fleet run), stats.go (counters,
// progress and summary), bench.go, scenarios.go, payload.go and latency.go
// (the load generator), procstatus.go (broker memory from /proc).
package simulator
