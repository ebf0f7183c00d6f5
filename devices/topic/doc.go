// Package topic checks and compares MQTT topic filters and matches topic
// names: the one topic matcher of Tether, for the access rules (device
// grants in devices, auth.rules in configs, the broker's ACL), the
// telemetry topic mapping and the broker's retained and backpressure
// hooks. It has no dependencies, so that configs can use it.
package topic
