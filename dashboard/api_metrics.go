package dashboard

import "github.com/prometheus/client_golang/prometheus"

// apiMetrics are the API's counters; they are a prometheus.Collector.
// Requests and their latency, the API's included, are HTTPMetrics'.
type apiMetrics struct {
	logins *prometheus.CounterVec
}

func newAPIMetrics() *apiMetrics {
	m := &apiMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_api_logins_total",
			Help: "API login attempts by result: ok, failed (wrong name or password), throttled (refused with 429 after repeated failures), banned (refused with 403: intrusion detection).",
		}, []string{"result"}),
	}
	for _, r := range []string{"ok", "failed", "throttled"} {
		m.logins.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *apiMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.logins.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *apiMetrics) Collect(ch chan<- prometheus.Metric) {
	m.logins.Collect(ch)
}
