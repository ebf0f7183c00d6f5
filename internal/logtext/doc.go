// Package logtext is the one rule by which a log line shortens text a
// client chose: topics, filters, client ids, header values. MQTT lets a
// topic or client id be 64 KiB long; a line that logged it whole (once a
// minute per client, times thousands of clients) would bury the log.
package logtext
