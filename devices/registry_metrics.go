package devices

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registryCollector exposes the fleet's size to Prometheus.
type registryCollector struct {
	r                        *Registry
	registered, online, user *prometheus.Desc
}

// Collector returns a prometheus.Collector of the registry's gauges:
// tether_devices_registered (from the identity cache),
// tether_devices_online (the presence the registry has recorded; it
// follows connects and disconnects within the presence writer's batch)
// and tether_users.
func (r *Registry) Collector() prometheus.Collector {
	return &registryCollector{
		r:          r,
		registered: prometheus.NewDesc("tether_devices_registered", "Devices in the registry.", nil, nil),
		online:     prometheus.NewDesc("tether_devices_online", "Devices connected, as the registry records presence.", nil, nil),
		user:       prometheus.NewDesc("tether_users", "Users in the registry.", nil, nil),
	}
}

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.registered
	ch <- c.online
	ch <- c.user
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.RLock()
	devices, users := len(c.r.devices), len(c.r.users)
	c.r.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(c.registered, prometheus.GaugeValue, float64(devices))
	ch <- prometheus.MustNewConstMetric(c.user, prometheus.GaugeValue, float64(users))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var online int64
	if err := c.r.db.R.QueryRowContext(ctx, `SELECT count(*) FROM devices WHERE online = 1`).Scan(&online); err != nil {
		ch <- prometheus.NewInvalidMetric(c.online, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.online, prometheus.GaugeValue, float64(online))
}
