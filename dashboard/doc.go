// Package dashboard is Tether's HTTP face: the JSON API under /api/v1, the
// embedded web UI at /, and the routes the process shares on its HTTP
// listeners (/mqtt, /metrics, /healthz, /readyz). The web UI is itself an
// MQTT-over-WebSocket client of the broker.
//
// The API reads the broker through small interfaces declared here
// (engine.go: Broker, Sessions, Commands, Twins) that cmd/tether fills
// with the broker's types; it does not import the MQTT engine.
package dashboard
