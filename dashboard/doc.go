// Package dashboard is Tether's HTTP face: the JSON API under /api/v1, the
// embedded web UI at /, and the routes the process shares on its HTTP
// listeners (/mqtt, /metrics, /healthz, /readyz). The web UI is itself an
// MQTT-over-WebSocket client of the broker.
package dashboard
