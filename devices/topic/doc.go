// Package topic checks and compares MQTT topic filters, for the access
// rules: device grants (devices), auth.rules (configs) and the broker's
// ACL (broker). It has no dependencies, so that configs can use it.
package topic
