package devices

import (
	"math"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// telemetryCollector exposes the store's counts to Prometheus.
type telemetryCollector struct {
	t                                         *Telemetry
	stored, dropped, rejected, errors, pruned *prometheus.Desc
	queued, batches, lastBatch                *prometheus.Desc
	queuedBytes, refusedMetrics               *prometheus.Desc
}

// Collector returns a prometheus.Collector of the store's counts.
func (t *Telemetry) Collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tether_telemetry_"+name, help, labels, nil)
	}
	return &telemetryCollector{
		t:              t,
		stored:         d("points_stored_total", "Telemetry points written to the history."),
		dropped:        d("points_dropped_total", "Telemetry points routed but not stored because the write queue was full (telemetry.queue_size points or telemetry.queue_bytes)."),
		rejected:       d("payloads_rejected_total", "Telemetry payloads routed but not stored because they are not a valid JSON object of metrics, by reason.", "reason"),
		errors:         d("write_errors_total", "Telemetry batches that failed to write."),
		pruned:         d("points_pruned_total", "Telemetry points deleted by retention."),
		queued:         d("queue_length", "Telemetry points waiting to be written."),
		batches:        d("batches_total", "Telemetry batches written."),
		lastBatch:      d("last_batch_seconds", "Time the last telemetry batch took to write."),
		queuedBytes:    d("queue_bytes", "Bytes of telemetry points waiting to be written or being written (bounded by telemetry.queue_bytes)."),
		refusedMetrics: d("metrics_refused_total", "Metrics left out of stored samples, by reason (device_metric_limit: their device has 1,024 metric names already).", "reason"),
	}
}

func (c *telemetryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.stored, c.dropped, c.rejected, c.errors, c.pruned, c.queued, c.batches, c.lastBatch, c.queuedBytes, c.refusedMetrics} {
		ch <- d
	}
}

func (c *telemetryCollector) Collect(ch chan<- prometheus.Metric) {
	s := &c.t.stats
	n := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	n(c.stored, s.stored.Load())
	n(c.dropped, s.dropped.Load())
	n(c.errors, s.writeErrors.Load())
	n(c.pruned, s.pruned.Load())
	n(c.batches, s.batches.Load())
	s.rejected.Range(func(k, v any) bool {
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(v.(*atomic.Int64).Load()), k.(string))
		return true
	})
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(len(c.t.queue)))
	ch <- prometheus.MustNewConstMetric(c.queuedBytes, prometheus.GaugeValue, float64(c.t.budget.held()))
	ch <- prometheus.MustNewConstMetric(c.refusedMetrics, prometheus.CounterValue, float64(s.metricsRefused.Load()), "device_metric_limit")
	ch <- prometheus.MustNewConstMetric(c.lastBatch, prometheus.GaugeValue, math.Float64frombits(uint64(s.lastBatchSeconds.Load())))
}

// Rejected returns how many payloads were rejected, all reasons together.
func (t *Telemetry) Rejected() int64 {
	var n int64
	t.stats.rejected.Range(func(_, v any) bool {
		n += v.(*atomic.Int64).Load()
		return true
	})
	return n
}
