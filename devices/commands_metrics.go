package devices

import "github.com/prometheus/client_golang/prometheus"

// commandsCollector exposes the command counts to Prometheus.
type commandsCollector struct {
	c                                             *Commands
	created, outcomes, delivered, responses, lost *prometheus.Desc
	open                                          *prometheus.Desc
}

// Collector returns a prometheus.Collector of the command counts.
func (c *Commands) Collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tether_commands_"+name, help, labels, nil)
	}
	return &commandsCollector{
		c:         c,
		created:   d("created_total", "Commands recorded, by where they were sent from.", "source"),
		outcomes:  d("outcomes_total", "Commands closed, by outcome.", "outcome"),
		delivered: d("delivered_total", "Commands the device received."),
		responses: d("responses_ignored_total", "Responses ignored: late (command already closed) or unknown (no such command).", "reason"),
		lost:      d("updates_dropped_total", "Command updates dropped because the write queue was full, or failed to write.", "reason"),
		open:      d("open", "Commands pending or delivered."),
	}
}

func (cc *commandsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cc.created, cc.outcomes, cc.delivered, cc.responses, cc.lost, cc.open} {
		ch <- d
	}
}

func (cc *commandsCollector) Collect(ch chan<- prometheus.Metric) {
	s := &cc.c.stats
	n := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	n(cc.created, s.created[0].Load(), "api")
	n(cc.created, s.created[1].Load(), "mqtt")
	n(cc.outcomes, s.succeeded.Load(), StatusSucceeded)
	n(cc.outcomes, s.failed.Load(), StatusFailed)
	n(cc.outcomes, s.expired.Load(), StatusExpired)
	n(cc.delivered, s.delivered.Load())
	n(cc.responses, s.lateResponses.Load(), "late")
	n(cc.responses, s.unknownResponses.Load(), "unknown")
	n(cc.lost, s.dropped.Load(), "queue_full")
	n(cc.lost, s.writeErrors.Load(), "write_error")
	cc.c.mu.Lock()
	open := len(cc.c.open)
	cc.c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(cc.open, prometheus.GaugeValue, float64(open))
}

// ResponseStats returns how many responses were late and unknown.
func (c *Commands) ResponseStats() (late, unknown int64) {
	return c.stats.lateResponses.Load(), c.stats.unknownResponses.Load()
}
