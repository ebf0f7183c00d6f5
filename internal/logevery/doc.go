// Package logevery decides when a repeated event may be logged again: the
// first time for each key (a device, a client), then at most once per
// interval, so that one client repeating a fault cannot flood the log.
// The telemetry hook's rejected payloads and the twins writer's refused
// patches share it.
package logevery
