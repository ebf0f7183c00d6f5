package sessions

import "github.com/prometheus/client_golang/prometheus"

// storeMetrics are the session store's counts.
type storeMetrics struct {
	commits, ops, errors, dropped, unsafeAcks prometheus.Counter
	queueDropped, queueDelivered              prometheus.Counter
	commitSeconds                             prometheus.Histogram
	// deep counts the records removed at load for having more levels
	// than mqtt.max_topic_levels, by what (load.go).
	deep *prometheus.CounterVec

	queueBytes func() int   // set by newStore
	healthy    func() error // set by newStore
	store      *Store       // set by newStore

	// gauges are read from the store when scraped.
	gauges []prometheus.GaugeFunc
}

func newStoreMetrics() *storeMetrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_store_" + name, Help: help})
	}
	m := &storeMetrics{
		commits:    c("commits_total", "Session store transactions committed."),
		ops:        c("ops_written_total", "Session store changes written."),
		errors:     c("errors_total", "Session store transactions that failed (and were retried)."),
		dropped:    c("ops_dropped_total", "Session store changes dropped because SQLite failed for longer than the queue could hold (the store is then rewritten from memory)."),
		unsafeAcks: c("acks_not_durable_total", "QoS 1/2 acknowledgements sent before their message was on disk, because the store was failing or slower than its commit timeout."),
		queueDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_mqtt_queue_dropped_total",
			Help: "QoS 1/2 messages refused for a persistent session because its queue (or all queues together) was full."}),
		queueDelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_mqtt_queue_delivered_total",
			Help: "Queued messages handed to a persistent session's inflight window."}),
		deep: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_store_deep_removed_total",
			Help: "Stored subscriptions and retained messages with more levels than mqtt.max_topic_levels (stored before the bound, or under a higher one): not loaded at start, and deleted from the store, by what (subscription, retained)."}, []string{"what"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_store_commit_seconds",
			Help:    "Time to write and commit one session store batch.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1, 5},
		}),
	}
	g := func(name, help string, f func() float64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.gauges = []prometheus.GaugeFunc{
		g("tether_store_queue_bytes", "Bytes of session store changes waiting to be written.", func() float64 { return float64(m.queueBytes()) }),
		g("tether_store_healthy", "1 when the session store is writing, 0 while SQLite fails.", func() float64 {
			if m.healthy() != nil {
				return 0
			}
			return 1
		}),
		g("tether_mqtt_queue_store_bytes", "Bytes the persistent sessions' queues hold on disk.", func() float64 {
			used, _ := m.store.QueueStoreUse()
			return float64(used)
		}),
		g("tether_mqtt_queue_store_limit_bytes", "mqtt.max_queue_store_bytes.", func() float64 {
			_, limit := m.store.QueueStoreUse()
			return float64(limit)
		}),
	}
	return m
}

// collectors are the store's metrics.
func (m *storeMetrics) collectors() []prometheus.Collector {
	cs := []prometheus.Collector{m.commits, m.ops, m.errors, m.dropped, m.unsafeAcks, m.queueDropped, m.queueDelivered, m.deep, m.commitSeconds}
	for _, g := range m.gauges {
		cs = append(cs, g)
	}
	return cs
}

// Describe implements prometheus.Collector.
func (m *storeMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *storeMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// Collector returns the store's Prometheus collector.
func (s *Store) Collector() prometheus.Collector { return s.metrics }
