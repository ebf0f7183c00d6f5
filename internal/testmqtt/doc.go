// Package testmqtt holds the helpers that several packages' tests share:
// polling for a condition with a deadline, waiting for a paho token, a
// test logger, a paho 3.1.1 client, a payload collector and a counter's
// value. It is imported by tests only.
package testmqtt
