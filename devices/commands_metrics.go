package devices

import "github.com/prometheus/client_golang/prometheus"

// commandMetrics are the command counts (metrics.go).
type commandMetrics struct {
	created                                  [2]prometheus.Counter // api, mqtt
	succeeded, failed, expired, delivered    prometheus.Counter
	lateResponses, unknownResponses, dropped prometheus.Counter
	writeErrors, dbErrors, unknownDevice     prometheus.Counter
	pruned                                   prometheus.Counter
	all                                      metrics
}

// newCommandMetrics returns c's metrics; the commands open are read from
// c when scraped.
func newCommandMetrics(c *Commands) *commandMetrics {
	vec := func(name, help, label string, values ...string) *prometheus.CounterVec {
		return counterVec(prometheus.CounterOpts{Name: "tether_commands_" + name, Help: help}, label, values...)
	}
	created := vec("created_total", "Commands recorded, by where they were sent from.", "source", "api", "mqtt")
	outcomes := vec("outcomes_total", "Commands closed, by outcome.", "outcome", StatusSucceeded, StatusFailed, StatusExpired)
	responses := vec("responses_ignored_total", "Responses ignored: late (command already closed) or unknown (no such command).", "reason", "late", "unknown")
	lost := vec("updates_dropped_total", "Command updates dropped because the write queue was full, their batch failed to write "+
		"(write_error), the database refused them (db_error), or (commands published over MQTT) they named no registered device.",
		"reason", "queue_full", "write_error", "db_error", "unknown_device")
	pruned := prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_commands_pruned_total",
		Help: "Commands deleted, whatever their status, because their device had more than commands.max_per_device."})
	delivered := prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_commands_delivered_total", Help: "Commands the device received."})
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_commands_open", Help: "Commands pending or delivered."}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(len(c.open))
	})
	return &commandMetrics{
		created:          [2]prometheus.Counter{created.WithLabelValues("api"), created.WithLabelValues("mqtt")},
		succeeded:        outcomes.WithLabelValues(StatusSucceeded),
		failed:           outcomes.WithLabelValues(StatusFailed),
		expired:          outcomes.WithLabelValues(StatusExpired),
		delivered:        delivered,
		lateResponses:    responses.WithLabelValues("late"),
		unknownResponses: responses.WithLabelValues("unknown"),
		dropped:          lost.WithLabelValues("queue_full"),
		writeErrors:      lost.WithLabelValues("write_error"),
		dbErrors:         lost.WithLabelValues("db_error"),
		unknownDevice:    lost.WithLabelValues("unknown_device"),
		pruned:           pruned,
		all:              metrics{created, outcomes, delivered, responses, lost, open, pruned},
	}
}

// Collector returns a prometheus.Collector of the command counts.
func (c *Commands) Collector() prometheus.Collector { return c.m.all }

// ResponseStats returns how many responses were late and unknown.
func (c *Commands) ResponseStats() (late, unknown int64) {
	return count(c.m.lateResponses), count(c.m.unknownResponses)
}
