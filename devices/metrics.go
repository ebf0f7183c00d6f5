package devices

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics follow one style in every package, client_golang's: what a
// package counts itself is a Counter (a CounterVec when it has labels,
// each label value created up front so that it reads 0 before its first
// event), a Gauge or a Histogram; a value that lives elsewhere (a
// queue's length) is a GaugeFunc read when scraped. Only what is read at
// scrape time and has labels or can fail (the engine's and listeners'
// figures in broker/metrics.go, a count in SQL in registry_metrics.go) is
// a Collector of const metrics. A store's Collector is its metrics.

// metrics is a store's metrics as one prometheus.Collector.
type metrics []prometheus.Collector

func (m metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m {
		c.Describe(ch)
	}
}

func (m metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m {
		c.Collect(ch)
	}
}

// count is a counter's value, for a store's own figures (Stats).
func count(c prometheus.Counter) int64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return int64(m.GetCounter().GetValue())
}

// counterVec returns a CounterVec with each of values of its one label
// created, so that each reads 0 until it is counted.
func counterVec(opts prometheus.CounterOpts, label string, values ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(opts, []string{label})
	for _, l := range values {
		v.WithLabelValues(l)
	}
	return v
}
