package devices

import (
	"github.com/prometheus/client_golang/prometheus"
)

// telemetryMetrics are the store's counts (metrics.go).
type telemetryMetrics struct {
	stored, dropped, writeErrors, pruned, batches prometheus.Counter
	// transactions are the writer's committed transactions: a batch is
	// written in several when it would write more than txRows rows.
	transactions prometheus.Counter
	// overRate are points not stored because their device was over
	// DeviceValuesRate; prunedSize points pruned by RetentionSize.
	overRate, prunedSize prometheus.Counter
	// historyBytes is the raw history's size as the pruner last
	// estimated it (historySize; telemetry.retention_size).
	historyBytes prometheus.Gauge
	// rollupBytes is the rollups' size as the pruner last estimated it
	// (rollupSize; telemetry.rollup_retention_size); minutesPruned and
	// hoursPruned are rollup rows deleted, by reason (retention, size:
	// rollupReasons).
	rollupBytes                prometheus.Gauge
	minutesPruned, hoursPruned [2]prometheus.Counter
	// dbErrors are points dropped because the database refused their
	// device's writes.
	dbErrors prometheus.Counter
	// metricsRefused is over MaxDeviceMetrics.
	metricsRefused prometheus.Counter
	// rejected is by reason (RejectReason).
	rejected  *prometheus.CounterVec
	lastBatch prometheus.Gauge
	all       metrics
}

// newTelemetryMetrics returns t's metrics; the queue's length and bytes
// are read from t when scraped.
func newTelemetryMetrics(t *Telemetry) *telemetryMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_telemetry_" + name, Help: help})
	}
	gaugeFunc := func(name, help string, f func() float64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_telemetry_" + name, Help: help}, f)
	}
	refused := counterVec(prometheus.CounterOpts{Name: "tether_telemetry_metrics_refused_total",
		Help: "Metrics left out of stored samples, by reason (device_metric_limit: their device has 1,024 metric names already)."},
		"reason", "device_metric_limit")
	dropped := counterVec(prometheus.CounterOpts{Name: "tether_telemetry_points_dropped_total",
		Help: "Telemetry points routed but not stored, by reason: queue_full (the write queue was full: telemetry.queue_size points or telemetry.queue_bytes), " +
			"db_error (the database refused their device's writes; the other devices' points of the batch were stored), " +
			"device_rate (their device was over telemetry.device_values_rate)."},
		"reason", "queue_full", "db_error", "device_rate")
	pruned := counterVec(prometheus.CounterOpts{Name: "tether_telemetry_points_pruned_total",
		Help: "Telemetry points deleted from the history (folded into the minute rollups), by reason: retention (older than telemetry.retention), " +
			"size (the oldest, while the history was larger than telemetry.retention_size)."},
		"reason", "retention", "size")
	rollupsPruned := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_telemetry_rollups_pruned_total",
		Help: "Rollup rows deleted, by rollup (minute: a chunk of one device's minutes, up to 240 of them; hour: one metric's hour of one device) " +
			"and reason: retention (older than telemetry.rollup_retention), size (the oldest, while the rollups were larger than telemetry.rollup_retention_size)."},
		[]string{"rollup", "reason"})
	m := &telemetryMetrics{
		stored:      counter("points_stored_total", "Telemetry points written to the history."),
		dropped:     dropped.WithLabelValues("queue_full"),
		dbErrors:    dropped.WithLabelValues("db_error"),
		writeErrors: counter("write_errors_total", "Telemetry batches that failed to write (the points of the transaction that failed, and of the batch's transactions after it, lost)."),
		pruned:      pruned.WithLabelValues("retention"),
		prunedSize:  pruned.WithLabelValues("size"),
		overRate:    dropped.WithLabelValues("device_rate"),
		historyBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_telemetry_history_bytes",
			Help: "Size of the raw telemetry history (the points, not the rollups) as the pruner last estimated it, in bytes, bounded by telemetry.retention_size."}),
		rollupBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_telemetry_rollup_bytes",
			Help: "Size of the telemetry rollups (per minute and per hour) as the pruner last estimated it, in bytes, bounded by telemetry.rollup_retention_size."}),
		batches: counter("batches_total", "Telemetry batches written."),
		transactions: counter("write_transactions_total", "Transactions the telemetry writer committed: a batch that would write more than 32,768 rows "+
			"(hourly rollups, history chunks, last values) is written in several, each committed on its own."),
		metricsRefused: refused.WithLabelValues("device_metric_limit"),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_telemetry_payloads_rejected_total",
			Help: "Telemetry payloads routed but not stored because they are not a valid JSON object of metrics, by reason."}, []string{"reason"}),
		lastBatch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_telemetry_last_batch_seconds",
			Help: "Time the last telemetry batch took to write."}),
	}
	for i, reason := range [2]string{"retention", "size"} {
		m.minutesPruned[i] = rollupsPruned.WithLabelValues("minute", reason)
		m.hoursPruned[i] = rollupsPruned.WithLabelValues("hour", reason)
	}
	m.all = metrics{m.stored, dropped, m.writeErrors, pruned, m.historyBytes, rollupsPruned, m.rollupBytes, m.batches, m.transactions, refused, m.rejected, m.lastBatch,
		gaugeFunc("queue_length", "Telemetry points waiting to be written.", func() float64 { return float64(t.queue.len()) }),
		gaugeFunc("queue_bytes", "Bytes of telemetry points waiting to be written or being written (bounded by telemetry.queue_bytes).",
			func() float64 { return float64(t.budget.held()) }),
	}
	return m
}

// Collector returns a prometheus.Collector of the store's counts.
func (t *Telemetry) Collector() prometheus.Collector { return t.m.all }

// Rejected returns how many payloads were rejected, all reasons together.
func (t *Telemetry) Rejected() int64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { t.m.rejected.Collect(ch); close(ch) }()
	var n int64
	for m := range ch {
		n += count(m.(prometheus.Counter))
	}
	return n
}
