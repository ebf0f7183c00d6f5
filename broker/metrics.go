package broker

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the broker's figures to Prometheus. It reads the
// engine's and the listeners' atomic counters at scrape time, so counting
// costs nothing per packet beyond what the engine already does.
type Collector struct {
	b *Broker

	conns, accepted, refused, bytesIn, bytesOut *prometheus.Desc
	clients, packetsIn, packetsOut              *prometheus.Desc
	msgsIn, msgsOut, msgsDropped, retained      *prometheus.Desc
	inflight, inflightDropped, subscriptions    *prometheus.Desc
	levelsRefused, queueDisconnects             *prometheus.Desc
}

// NewCollector returns a collector for b; register it with a registry.
func NewCollector(b *Broker) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tether_"+name, help, labels, nil)
	}
	return &Collector{
		b:                b,
		conns:            d("connections", "Open network connections by transport.", "transport"),
		accepted:         d("connections_accepted_total", "Connections handed to the MQTT engine, by transport.", "transport"),
		refused:          d("connections_refused_total", "Connections refused before the MQTT engine saw them (shutting down, upgrade refused), by transport.", "transport"),
		bytesIn:          d("bytes_received_total", "Bytes received, by transport.", "transport"),
		bytesOut:         d("bytes_sent_total", "Bytes sent, by transport.", "transport"),
		clients:          d("mqtt_clients_connected", "MQTT clients connected now."),
		packetsIn:        d("mqtt_packets_received_total", "MQTT packets received."),
		packetsOut:       d("mqtt_packets_sent_total", "MQTT packets sent."),
		msgsIn:           d("mqtt_messages_received_total", "PUBLISH messages received."),
		msgsOut:          d("mqtt_messages_sent_total", "PUBLISH messages sent."),
		msgsDropped:      d("mqtt_messages_dropped_total", "PUBLISH messages dropped for a subscriber, by reason: its send queue full (client_queue_size), or a large QoS 0 message past mqtt.client_queue_bytes or mqtt.client_queue_total_bytes (and a clean session's large QoS 1/2 messages lost when it was disconnected for them).", "reason"),
		retained:         d("mqtt_retained_messages", "Retained messages held."),
		inflight:         d("mqtt_inflight_messages", "QoS 1/2 messages in flight."),
		inflightDropped:  d("mqtt_inflight_dropped_total", "QoS 1/2 messages dropped from flight (expired or over the limit)."),
		subscriptions:    d("mqtt_subscriptions", "Subscriptions held."),
		queueDisconnects: d("mqtt_clients_disconnected_total", "Clients disconnected by the broker, by reason: stuck (nothing acknowledged for a round of mqtt.backpressure_wait) with large QoS 1/2 messages past mqtt.client_queue_bytes or mqtt.client_queue_total_bytes.", "reason"),
		levelsRefused:    d("mqtt_topic_levels_refused_total", "Topic names and filters refused for having more levels than mqtt.max_topic_levels, by what carried them (subscribe, publish, will).", "what"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.accepted, c.refused, c.bytesIn, c.bytesOut,
		c.clients, c.packetsIn, c.packetsOut, c.msgsIn, c.msgsOut, c.msgsDropped, c.retained,
		c.inflight, c.inflightDropped, c.subscriptions, c.levelsRefused, c.queueDisconnects} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.b.listeners() {
		s, t := l.Stats(), l.ID()
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.Open.Load()), t)
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(s.Accepted.Load()), t)
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(s.Refused.Load()), t)
		ch <- prometheus.MustNewConstMetric(c.bytesIn, prometheus.CounterValue, float64(s.BytesIn.Load()), t)
		ch <- prometheus.MustNewConstMetric(c.bytesOut, prometheus.CounterValue, float64(s.BytesOut.Load()), t)
	}
	i := c.b.Server.Info
	g := func(d *prometheus.Desc, v *int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(atomic.LoadInt64(v)))
	}
	n := func(d *prometheus.Desc, v *int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(atomic.LoadInt64(v)))
	}
	g(c.clients, &i.ClientsConnected)
	n(c.packetsIn, &i.PacketsReceived)
	n(c.packetsOut, &i.PacketsSent)
	n(c.msgsIn, &i.MessagesReceived)
	n(c.msgsOut, &i.MessagesSent)
	ch <- prometheus.MustNewConstMetric(c.msgsDropped, prometheus.CounterValue, float64(atomic.LoadInt64(&i.MessagesDropped)), "client_queue_size")
	for reason, name := range dropReasonNames {
		var v int64
		if q := c.b.sendq; q != nil {
			v = q.Dropped(reason)
		}
		ch <- prometheus.MustNewConstMetric(c.msgsDropped, prometheus.CounterValue, float64(v), name)
		v = 0
		if q := c.b.sendq; q != nil {
			v = q.Disconnected(reason)
		}
		ch <- prometheus.MustNewConstMetric(c.queueDisconnects, prometheus.CounterValue, float64(v), name)
	}
	g(c.retained, &i.Retained)
	g(c.inflight, &i.Inflight)
	n(c.inflightDropped, &i.InflightDropped)
	g(c.subscriptions, &i.Subscriptions)
	r := &c.b.levelsRefused
	for what, v := range map[string]*atomic.Int64{"subscribe": &r.subscribe, "publish": &r.publish, "will": &r.will} {
		ch <- prometheus.MustNewConstMetric(c.levelsRefused, prometheus.CounterValue, float64(v.Load()), what)
	}
}
